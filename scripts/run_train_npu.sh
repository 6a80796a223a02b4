#!/usr/bin/env bash
# Launch a MiniMind training stage on 8 Ascend NPUs (one node) through torchrun.
#
#   bash scripts/run_train_npu.sh STAGE [extra flags...]
#   bash scripts/run_train_npu.sh pretrain --epochs 1 --batch_size 32
#   NPROC=4 bash scripts/run_train_npu.sh full_sft --from_weight pretrain
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/run_train_npu.sh pretrain      # multi-node
#
# STAGE is a trainer/train_STAGE.py script: pretrain, full_sft, lora, dpo, distillation, reason, ppo, grpo, spo.
# The scripts select the NPU path by themselves (trainer_utils.is_npu_available(): torch_npu imported and an
# NPU present): device npu:LOCAL_RANK, the hccl backend and bf16 autocast.
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,12p' "$0"; exit 1
fi
STAGE="$1"; shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$ROOT/trainer/train_${STAGE}.py"
[ -f "$SCRIPT" ] || { echo "error: no such stage '$STAGE' ($SCRIPT not found)" >&2; exit 1; }

python -c "import torch_npu, torch; assert torch.npu.is_available(), 'no NPU visible'" \
  || { echo "error: torch_npu is not installed or no Ascend NPU is visible (source the CANN set_env.sh first)" >&2; exit 1; }

# Recommended HCCL / CANN settings for single-machine training.
export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1200}"
export TASK_QUEUE_ENABLE="${TASK_QUEUE_ENABLE:-1}"

exec torchrun \
  --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  --nproc_per_node "${NPROC:-8}" \
  "$SCRIPT" --device npu "$@"
