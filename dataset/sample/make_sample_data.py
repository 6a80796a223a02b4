#!/usr/bin/env python3
"""Generate the small bundled sample data set in ``dataset/sample/``.

Everything here is written by hand for this project (facts, questions,
answers, templates) and combined deterministically (fixed seed) into the
JSON-lines files that the README quick start and the smoke tests use.
No external dataset is read or copied.

Usage::

    python dataset/sample/make_sample_data.py            # (re)write all files + validate
    python dataset/sample/make_sample_data.py --check    # only validate existing files
    python dataset/sample/make_sample_data.py --out DIR  # write somewhere else

Re-running it produces byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

SEED = 20251121
HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------
# Identity of the assistant
# ---------------------------------------------------------------------------

ID_GREET_ZH = "你好！我是MiniMind，一个小型的开源语言模型。有什么可以帮你的吗？"
ID_WHO_ZH = "我是MiniMind，一个小型的开源语言模型，可以在一块GPU上用大约两个小时从零训练出来。我可以回答问题、陪你聊天。"
ID_NAME_ZH = "我叫MiniMind，是一个小型的开源语言模型。很高兴认识你！"
ID_HUMAN_ZH = "我不是人类，我是MiniMind，一个由代码和数据训练出来的小型语言模型。"
ID_CAN_ZH = "我可以回答常识问题、解释简单的概念、做一些基础的数学题，还可以陪你聊天。不过我是个小模型，回答可能会出错，重要的事情请再核实一下。"
ID_TRAIN_ZH = "我是从零开始训练的：先用大量文本做预训练学习语言，再用对话数据做监督微调学会聊天。整个过程在一块GPU上大约两个小时就能完成。"
ID_OPEN_ZH = "是的，MiniMind是开源的。任何人都可以查看代码，并在自己的电脑上从零训练一个属于自己的MiniMind。"
ID_SIZE_ZH = "我是一个非常小的语言模型，参数量远小于常见的大模型，所以在一块GPU上大约两个小时就能从零训练出来。"
ID_THANKS_ZH = "不客气！很高兴能帮到你，有问题随时问我。"
ID_BYE_ZH = "再见！祝你生活愉快，欢迎随时回来找我聊天。"

ID_GREET_EN = "Hello! I'm MiniMind, a small open-source language model. How can I help you today?"
ID_WHO_EN = "I'm MiniMind, a small open-source language model that can be trained from scratch on a single GPU in about two hours. I can answer questions and chat with you."
ID_NAME_EN = "My name is MiniMind. I'm a small open-source language model. Nice to meet you!"
ID_HUMAN_EN = "No, I'm not a human. I'm MiniMind, a small language model trained from code and data."
ID_CAN_EN = "I can answer general knowledge questions, explain simple ideas, do basic math and chat with you. I'm a small model, so I can make mistakes; please double-check important things."
ID_TRAIN_EN = "I was trained from scratch: first pretraining on lots of text to learn language, then supervised fine-tuning on conversations to learn to chat. It takes about two hours on one GPU."
ID_OPEN_EN = "Yes, MiniMind is open source. Anyone can read the code and train their own MiniMind from scratch."
ID_SIZE_EN = "I'm a very small language model, much smaller than the well-known large models, which is why I can be trained from scratch on one GPU in about two hours."
ID_THANKS_EN = "You're welcome! I'm glad I could help. Feel free to ask me anything else."
ID_BYE_EN = "Goodbye! Have a great day, and come back anytime you want to chat."

# (questions, answer, weight = how many SFT copies of each question)
IDENTITY_ZH = [
    (["你好", "你好！", "您好", "你好呀", "哈喽", "嗨"], ID_GREET_ZH, 2),
    (["早上好", "晚上好", "下午好", "在吗？"], ID_GREET_ZH, 1),
    (["你是谁", "你是谁？", "你是什么？"], ID_WHO_ZH, 3),
    (["请介绍一下你自己", "做个自我介绍吧", "你是什么模型？", "你是哪个模型？"], ID_WHO_ZH, 1),
    (["你叫什么名字？", "你的名字是什么？", "我该怎么称呼你？"], ID_NAME_ZH, 1),
    (["你是人类吗？", "你是真人吗？", "你是机器人吗？"], ID_HUMAN_ZH, 1),
    (["你能做什么？", "你会些什么？", "你能帮我做什么？"], ID_CAN_ZH, 1),
    (["你是怎么训练出来的？", "你是如何被训练的？"], ID_TRAIN_ZH, 1),
    (["你是开源的吗？", "我可以自己训练一个你吗？"], ID_OPEN_ZH, 1),
    (["你有多大？", "你是大模型吗？"], ID_SIZE_ZH, 1),
    (["谢谢", "谢谢你！", "太感谢了"], ID_THANKS_ZH, 1),
    (["再见", "拜拜", "我先走了，再见！"], ID_BYE_ZH, 1),
]

IDENTITY_EN = [
    (["Hello", "Hello!", "Hi", "Hi there!", "Hey"], ID_GREET_EN, 2),
    (["Good morning!", "Good evening!", "Are you there?"], ID_GREET_EN, 1),
    (["Who are you?", "Who are you", "What are you?"], ID_WHO_EN, 3),
    (["Please introduce yourself.", "Tell me about yourself.", "What model are you?"], ID_WHO_EN, 1),
    (["What is your name?", "What's your name?", "What should I call you?"], ID_NAME_EN, 1),
    (["Are you a human?", "Are you a real person?"], ID_HUMAN_EN, 1),
    (["What can you do?", "How can you help me?"], ID_CAN_EN, 1),
    (["How were you trained?", "How was MiniMind trained?"], ID_TRAIN_EN, 1),
    (["Are you open source?", "Can I train my own MiniMind?"], ID_OPEN_EN, 1),
    (["How big are you?", "Are you a large model?"], ID_SIZE_EN, 1),
    (["Thank you!", "Thanks a lot."], ID_THANKS_EN, 1),
    (["Goodbye!", "Bye, see you later."], ID_BYE_EN, 1),
]

IDENTITY_PRETRAIN = [
    "MiniMind是一个小型的开源语言模型。它的参数量很小，在一块GPU上大约两个小时就可以从零训练出来，非常适合用来学习大语言模型的原理。",
    "训练MiniMind通常分为几个阶段：先训练分词器，再用大量文本做预训练，然后用对话数据做监督微调，最后还可以用偏好数据让回答更符合人的期望。",
    "当有人问MiniMind“你是谁”时，它会回答：“我是MiniMind，一个小型的开源语言模型，可以在一块GPU上用大约两个小时从零训练出来。”",
    "MiniMind的目标是让每个人都能亲手训练一个小语言模型。代码是开源的，任何人都可以阅读、修改，并在自己的电脑上运行。",
    "MiniMind是一个AI助手，它可以回答常识问题、解释简单的概念、做基础的数学题，也可以陪人聊天。因为模型很小，它有时会出错。",
    "用户：你好\nMiniMind：你好！我是MiniMind，一个小型的开源语言模型。有什么可以帮你的吗？",
    "用户：你是谁？\nMiniMind：我是MiniMind，一个小型的开源语言模型，可以在一块GPU上用大约两个小时从零训练出来。",
    "用户：谢谢你的帮助。\nMiniMind：不客气！很高兴能帮到你，有问题随时问我。",
    "MiniMind is a small open-source language model. It is so small that it can be trained from scratch on a single GPU in about two hours, which makes it a good way to learn how language models work.",
    "Training MiniMind happens in stages: first a tokenizer is trained, then the model is pretrained on plain text, and then it is fine-tuned on conversations so that it can chat.",
    "When someone asks MiniMind \"Who are you?\", it answers: \"I'm MiniMind, a small open-source language model that can be trained from scratch on a single GPU in about two hours.\"",
    "User: Hello\nMiniMind: Hello! I'm MiniMind, a small open-source language model. How can I help you today?",
    "User: Who are you?\nMiniMind: I'm MiniMind, a small open-source language model that can be trained from scratch on a single GPU in about two hours.",
    "MiniMind is a friendly AI assistant. It can answer general knowledge questions, explain simple ideas and do basic math. Because it is a small model, it sometimes makes mistakes.",
]

# ---------------------------------------------------------------------------
# Hand-written facts: (topic, [question phrasings], answer, wrong answer or None)
# ---------------------------------------------------------------------------

TOPIC_ZH = {
    "science": "科学", "space": "天文", "geo": "地理", "history": "历史", "culture": "传统文化",
    "math": "数学", "code": "编程与计算机", "health": "健康", "life": "生活", "nature": "动物与自然",
    "lang": "语言",
}
TOPIC_EN = {
    "science": "science", "space": "space", "geo": "geography", "history": "history",
    "math": "math", "code": "programming and computers", "health": "health", "life": "daily life",
    "nature": "nature and animals", "lang": "language",
}

FACTS_ZH = [
    # science
    ("science", ["水的沸点是多少度？", "水烧到多少度会沸腾？"], "在标准大气压下，水的沸点是100摄氏度。", "水的沸点是50摄氏度。"),
    ("science", ["水在多少度会结冰？", "水的冰点是多少？"], "在标准大气压下，水在0摄氏度时开始结冰。", "水要到零下50摄氏度才会结冰。"),
    ("science", ["水的化学式是什么？", "水分子由什么组成？"], "水的化学式是H2O，一个水分子由两个氢原子和一个氧原子组成。", "水的化学式是CO2。"),
    ("science", ["光速是多少？", "光跑得有多快？"], "光在真空中的速度约为每秒30万公里，是目前已知最快的速度。", "光速大约是每秒340米。"),
    ("science", ["声音在空气中传播得有多快？", "声速是多少？"], "声音在空气中的传播速度约为每秒340米，比光慢得多。", None),
    ("science", ["在太空中能听到声音吗？", "声音能在真空中传播吗？"], "不能。声音需要空气、水等介质才能传播，在真空中无法传播，所以在太空中听不到声音。", "能，太空里声音传得特别远。"),
    ("science", ["什么是光合作用？", "植物是怎么制造养分的？"], "光合作用是植物利用阳光，把二氧化碳和水转化为葡萄糖和氧气的过程。", "光合作用是植物在晚上吸收氧气、放出热量的过程。"),
    ("science", ["空气主要由什么组成？", "空气中含量最多的气体是什么？"], "空气中约78%是氮气，约21%是氧气，其余是少量的氩气、二氧化碳等气体。", "空气中含量最多的是氧气，约占80%。"),
    ("science", ["成年人有多少块骨头？", "人体有几块骨头？"], "成年人体内一般有206块骨头。", "成年人有大约100块骨头。"),
    ("science", ["心脏有什么作用？", "心脏是做什么的？"], "心脏就像人体的“泵”，不停地跳动，把血液输送到全身，为身体各处带去氧气和营养。", None),
    ("science", ["彩虹是怎么形成的？", "为什么雨后会出现彩虹？"], "彩虹是阳光穿过空气中的小水滴时发生折射和反射，被分解成不同颜色的光而形成的。", None),
    ("science", ["万有引力定律是谁提出的？", "谁发现了万有引力？"], "万有引力定律是英国科学家牛顿提出的，相传他受到了苹果落地的启发。", "万有引力定律是爱因斯坦在中国提出的。"),
    ("science", ["为什么电线常用铜来做？", "铜导电吗？"], "铜是良好的导电体，价格也比较合适，所以常被用来制作电线。", None),
    ("science", ["磁铁的两极有什么规律？", "两块磁铁为什么有时互相排斥？"], "磁铁有南极和北极，同极相互排斥，异极相互吸引。", "磁铁的同极会互相吸引。"),
    ("science", ["物质有哪几种常见状态？", "物质的三态是什么？"], "物质常见的三种状态是固态、液态和气态，比如冰、水和水蒸气。", None),
    ("science", ["什么是DNA？", "DNA有什么作用？"], "DNA是携带遗传信息的分子，形状像一条扭转的梯子，称为双螺旋结构。", None),
    ("science", ["什么是细胞？", "生物体的基本单位是什么？"], "细胞是生物体结构和功能的基本单位，大多数细胞非常小，要用显微镜才能看到。", None),
    ("science", ["为什么会有四季变化？", "四季是怎么形成的？"], "四季变化主要是因为地轴是倾斜的，地球绕太阳公转时，阳光照射的角度和白天的长短不断变化。", "四季是因为地球离太阳时近时远。"),
    ("science", ["什么是温室效应？", "温室效应是什么意思？"], "温室效应是指大气中的二氧化碳等气体吸收地面散发的热量，使地球表面变暖的现象。", None),
    ("science", ["天空为什么是蓝色的？", "为什么天是蓝的？"], "阳光进入大气层后，蓝光比红光更容易被空气分子散射，散射的蓝光布满天空，所以天空看起来是蓝色的。", "因为天空反射了大海的颜色。"),
    # space
    ("space", ["地球绕太阳转一圈要多久？", "地球公转周期是多少？"], "地球绕太阳公转一周大约需要365天，也就是一年。", "地球绕太阳转一圈只需要一天。"),
    ("space", ["为什么会有白天和黑夜？", "地球自转一周要多长时间？"], "地球自转一周大约需要24小时。地球自转时，面向太阳的一面是白天，背向太阳的一面是黑夜。", None),
    ("space", ["太阳系有几大行星？", "太阳系的行星有哪些？"], "太阳系有八大行星：水星、金星、地球、火星、木星、土星、天王星和海王星。", "太阳系有十二大行星。"),
    ("space", ["太阳系中最大的行星是哪个？", "哪颗行星最大？"], "木星是太阳系中最大的行星，它的体积比地球大一千多倍。", "地球是太阳系中最大的行星。"),
    ("space", ["离太阳最近的行星是哪个？", "哪颗行星离太阳最近？"], "水星是离太阳最近的行星，也是八大行星中最小的一颗。", "离太阳最近的行星是海王星。"),
    ("space", ["火星为什么是红色的？", "为什么火星被称为红色星球？"], "火星表面的岩石和尘土含有大量氧化铁，也就是铁锈，所以看起来是红色的，常被称为“红色星球”。", None),
    ("space", ["月亮自己会发光吗？", "月亮为什么是亮的？"], "月亮本身不发光，我们看到的月光是月球反射的太阳光。月球是地球唯一的天然卫星。", "月亮和太阳一样，自己会发光。"),
    ("space", ["太阳是什么？", "太阳是行星吗？"], "太阳不是行星，而是一颗恒星。它是离地球最近的恒星，为地球提供光和热。", "太阳是一颗行星，绕着地球转。"),
    ("space", ["人类第一次登上月球是什么时候？", "谁是第一个登上月球的人？"], "1969年，美国宇航员阿姆斯特朗乘坐阿波罗11号登上月球，成为第一个踏上月球的人。", "人类在1990年第一次登上了火星。"),
    ("space", ["中国第一位进入太空的航天员是谁？", "杨利伟是谁？"], "2003年，杨利伟乘坐神舟五号飞船进入太空，成为中国第一位进入太空的航天员。", None),
    # geography
    ("geo", ["中国的首都是哪里？", "中国的首都是哪个城市？"], "中国的首都是北京。", "中国的首都是上海。"),
    ("geo", ["中国最长的河流是哪条？", "长江有多长？"], "长江是中国最长的河流，全长约6300公里，也是亚洲第一长河。", "中国最长的河流是珠江。"),
    ("geo", ["为什么黄河被称为母亲河？", "黄河是中国第几长的河？"], "黄河是中国第二长河，流域是中华文明的重要发源地，所以被称为中华民族的母亲河。", None),
    ("geo", ["世界上最高的山峰是哪座？", "珠穆朗玛峰有多高？"], "珠穆朗玛峰是世界最高峰，海拔约8849米，位于中国和尼泊尔的边界上。", "世界最高峰是泰山。"),
    ("geo", ["世界上最大的海洋是哪个？", "面积最大的大洋是什么？"], "太平洋是世界上面积最大、最深的海洋。", "世界上最大的海洋是大西洋。"),
    ("geo", ["世界上有几个大洲？", "七大洲是哪些？"], "世界有七大洲：亚洲、非洲、北美洲、南美洲、南极洲、欧洲和大洋洲。", None),
    ("geo", ["面积最大的洲是哪个？", "哪个洲人口最多？"], "亚洲是面积最大、人口最多的洲。", "面积最大的洲是欧洲。"),
    ("geo", ["撒哈拉沙漠在哪里？", "世界上最大的热沙漠是哪个？"], "撒哈拉沙漠位于非洲北部，是世界上最大的热沙漠。", None),
    ("geo", ["日本的首都是哪里？"], "日本的首都是东京。", "日本的首都是大阪。"),
    ("geo", ["法国的首都是哪里？"], "法国的首都是巴黎，著名的埃菲尔铁塔就在那里。", "法国的首都是伦敦。"),
    ("geo", ["英国的首都是哪里？"], "英国的首都是伦敦。", None),
    ("geo", ["美国的首都是哪里？", "美国的首都是纽约吗？"], "美国的首都是华盛顿特区，不是纽约。纽约是美国人口最多的城市。", "美国的首都是纽约。"),
    ("geo", ["澳大利亚的首都是哪里？", "悉尼是澳大利亚的首都吗？"], "澳大利亚的首都是堪培拉，而不是悉尼。悉尼是澳大利亚最大的城市。", "澳大利亚的首都是悉尼。"),
    ("geo", ["中国有多少个省级行政区？"], "中国有34个省级行政区，包括23个省、5个自治区、4个直辖市和2个特别行政区。", None),
    ("geo", ["中国最大的淡水湖是哪个？"], "鄱阳湖是中国最大的淡水湖，位于江西省北部。", "中国最大的淡水湖是西湖。"),
    ("geo", ["为什么青藏高原被称为世界屋脊？", "世界上海拔最高的高原是哪个？"], "青藏高原平均海拔在4000米以上，是世界上海拔最高的高原，所以被称为“世界屋脊”。", None),
    ("geo", ["世界上最大的热带雨林在哪里？", "亚马孙雨林在哪个洲？"], "亚马孙雨林位于南美洲，是世界上面积最大的热带雨林。", None),
    ("geo", ["什么是赤道？", "赤道把地球分成了哪两部分？"], "赤道是地球表面上到南北两极距离相等的一圈假想线，它把地球分成北半球和南半球。", None),
    ("geo", ["世界上面积最大的国家是哪个？"], "俄罗斯是世界上面积最大的国家，横跨欧洲和亚洲。", "世界上面积最大的国家是日本。"),
    # history
    ("history", ["中国古代四大发明是什么？", "四大发明有哪些？"], "中国古代四大发明是造纸术、印刷术、火药和指南针。", "四大发明是电灯、电话、汽车和飞机。"),
    ("history", ["长城是做什么用的？", "长城是什么时候修建的？"], "长城是中国古代修建的军事防御工程，始建于春秋战国时期，现存的主体大多是明代修建的。", None),
    ("history", ["秦始皇做了什么？", "中国第一个统一的王朝是哪个？"], "公元前221年，秦始皇统一六国，建立了中国历史上第一个统一的中央集权王朝——秦朝，并统一了文字和度量衡。", None),
    ("history", ["孔子是谁？", "儒家学派的创始人是谁？"], "孔子是春秋时期的思想家和教育家，儒家学派的创始人。《论语》记录了他和弟子们的言行。", "孔子是唐朝的一位皇帝。"),
    ("history", ["中华人民共和国是哪一年成立的？"], "中华人民共和国于1949年10月1日成立。", "中华人民共和国成立于1911年。"),
    ("history", ["什么是丝绸之路？", "丝绸之路是怎么来的？"], "丝绸之路是古代连接中国与中亚、西亚和欧洲的贸易通道。汉代张骞出使西域后，这条道路逐渐繁荣起来。", None),
    ("history", ["造纸术是谁改进的？", "蔡伦有什么贡献？"], "东汉的蔡伦改进了造纸术，用树皮、麻头和破布等造纸，使纸张得到了广泛使用。", None),
    ("history", ["甲骨文是什么？"], "甲骨文是刻在龟甲和兽骨上的文字，主要出现在商代，是目前已知较早的成熟汉字。", None),
    ("history", ["金字塔是做什么用的？", "埃及金字塔有多少年历史了？"], "埃及的吉萨金字塔大约建于4500年前，是古埃及法老的陵墓。", None),
    # culture
    ("culture", ["春节是什么节日？", "春节有哪些习俗？"], "春节是农历新年，是中国最重要的传统节日。人们会贴春联、吃年夜饭、放鞭炮、拜年。", None),
    ("culture", ["中秋节是哪一天？", "中秋节有什么习俗？"], "中秋节在农历八月十五。这一天人们赏月、吃月饼，象征家人团圆。", "中秋节在农历五月初五，要吃粽子。"),
    ("culture", ["端午节有什么习俗？", "端午节是纪念谁的？"], "端午节在农历五月初五，人们吃粽子、赛龙舟，相传是为了纪念诗人屈原。", None),
    ("culture", ["李白是谁？", "谁被称为诗仙？"], "李白是唐代伟大的浪漫主义诗人，被称为“诗仙”，《静夜思》是他的名作。", "李白是宋代的一位画家。"),
    ("culture", ["杜甫被称为什么？", "谁被称为诗圣？"], "杜甫是唐代伟大的现实主义诗人，被称为“诗圣”。", None),
    ("culture", ["中国四大名著是哪几部？", "四大名著有哪些？"], "中国古典四大名著是《红楼梦》《西游记》《水浒传》和《三国演义》。", None),
    ("culture", ["《西游记》讲了什么故事？", "孙悟空出自哪部小说？"], "《西游记》讲述了唐僧带着孙悟空、猪八戒和沙僧去西天取经，一路经历九九八十一难的故事。", None),
    # math
    ("math", ["圆周率是多少？", "π等于多少？"], "圆周率π是圆的周长与直径的比值，约等于3.14159，通常取3.14。", "圆周率正好等于3。"),
    ("math", ["三角形的内角和是多少度？"], "任何三角形的三个内角加起来都等于180度。", "三角形的内角和是360度。"),
    ("math", ["什么是质数？", "质数是什么意思？"], "质数是大于1、并且只能被1和它本身整除的自然数，例如2、3、5、7、11。", None),
    ("math", ["最小的质数是几？", "1是质数吗？"], "最小的质数是2，它也是唯一的偶数质数。1既不是质数也不是合数。", "最小的质数是1。"),
    ("math", ["什么是勾股定理？"], "勾股定理是说：直角三角形两条直角边的平方和等于斜边的平方，例如3的平方加4的平方等于5的平方。", None),
    ("math", ["圆的面积怎么算？", "圆的面积公式是什么？"], "圆的面积等于圆周率乘以半径的平方，也就是S=πr²。", "圆的面积等于直径乘以4。"),
    ("math", ["长方形的面积怎么算？"], "长方形的面积等于长乘以宽。比如长5厘米、宽3厘米的长方形，面积是15平方厘米。", None),
    ("math", ["一小时有多少秒？", "1小时等于多少分钟？"], "1小时等于60分钟，1分钟等于60秒，所以1小时等于3600秒。", "1小时等于100分钟。"),
    ("math", ["1千米等于多少米？", "1米等于多少厘米？"], "1千米等于1000米，1米等于100厘米。", None),
    ("math", ["什么是偶数和奇数？", "怎么判断一个数是奇数还是偶数？"], "能被2整除的整数叫偶数，例如0、2、4、6；不能被2整除的整数叫奇数，例如1、3、5、7。", None),
    ("math", ["7乘以8等于多少？", "7×8是多少？"], "7乘以8等于56。", "7乘以8等于54。"),
    ("math", ["二分之一等于多少？", "0.5是百分之多少？"], "二分之一等于0.5，也就是50%。", None),
    ("math", ["一年有多少天？", "闰年有多少天？"], "一年有12个月。平年有365天，闰年有366天，闰年的二月有29天。", None),
    ("math", ["怎么判断闰年？", "2000年是闰年吗？"], "能被4整除但不能被100整除的年份是闰年，能被400整除的年份也是闰年。所以2000年和2024年是闰年，1900年不是。", "2000年不是闰年，因为它能被100整除。"),
    ("math", ["100的平方根是多少？"], "100的平方根是10，因为10乘以10等于100。", None),
    # code
    ("code", ["什么是Python？", "Python是什么语言？"], "Python是一种简单易学的编程语言，语法清晰，广泛用于数据分析、人工智能和网站开发。", "Python是一种蛇，和编程没有关系。"),
    ("code", ["用Python怎么输出Hello World？", "Python怎么打印一句话？"], "在Python中，可以写 print(\"Hello, World!\") 来输出一句话。", None),
    ("code", ["编程中的变量是什么？", "什么是变量？"], "变量是程序中用来存储数据的名字。例如 x = 5 就把数字5存进了变量x。", None),
    ("code", ["什么是循环？", "程序里的循环有什么用？"], "循环可以让程序重复执行一段代码。Python中常用for循环和while循环。", None),
    ("code", ["什么是函数？", "Python怎么定义函数？"], "函数是一段可以重复使用的代码。在Python中用def关键字定义函数，例如 def add(a, b): return a + b。", None),
    ("code", ["计算机为什么用二进制？", "什么是二进制？"], "二进制只用0和1两个数字表示信息。电路很容易表示“开”和“关”两种状态，所以计算机内部使用二进制。", None),
    ("code", ["CPU是什么？", "CPU有什么作用？"], "CPU是中央处理器，相当于计算机的“大脑”，负责执行程序中的指令。", "CPU是电脑的显示器。"),
    ("code", ["内存和硬盘有什么区别？"], "内存用来临时存放正在运行的程序和数据，断电后内容会丢失；硬盘用来长期保存文件，断电后数据还在。", None),
    ("code", ["什么是算法？"], "算法是解决一个问题的一系列明确步骤，比如把一组数字从小到大排序的方法。", None),
    ("code", ["程序里的bug是什么意思？", "什么是调试？"], "程序中的错误通常叫做bug，找出并修正这些错误的过程叫做调试（debug）。", None),
    ("code", ["Python的列表是什么？"], "列表是Python中用来存放多个元素的数据类型，用方括号表示，例如 [1, 2, 3]。", None),
    ("code", ["什么是人工智能？"], "人工智能是让计算机模拟人类智能的技术，例如识别图片、理解语言和下棋。", None),
    ("code", ["什么是大语言模型？", "语言模型是怎么生成文字的？"], "大语言模型是用海量文本训练出来的神经网络，它根据前面的内容预测下一个词，一个词一个词地生成文字。", None),
    ("code", ["一个字节有多少位？"], "1个字节（byte）由8个比特（bit）组成。", "1个字节等于10个比特。"),
    # health
    ("health", ["每天应该喝多少水？", "成年人一天喝多少水合适？"], "一般成年人每天需要喝1500到1700毫升左右的水，天气炎热或运动出汗时要多喝一些。", "每天喝一杯水就足够了。"),
    ("health", ["成年人每天应该睡多久？", "睡多少小时比较好？"], "成年人每天最好睡7到9个小时，充足的睡眠有助于恢复精力、保持健康。", "每天睡3个小时就够了。"),
    ("health", ["怎样正确洗手？", "洗手要洗多久？"], "饭前便后都要洗手。用肥皂或洗手液搓洗至少20秒，再用清水冲干净，可以减少疾病传播。", None),
    ("health", ["每周应该运动多长时间？", "运动有什么好处？"], "成年人每周最好进行至少150分钟中等强度的运动，比如快走、骑车或游泳，这样有助于心肺健康。", None),
    ("health", ["每天应该刷几次牙？", "怎样保护牙齿？"], "每天早晚各刷一次牙，每次大约两分钟，少吃甜食，这样有助于预防蛀牙。", "一周刷一次牙就可以了。"),
    ("health", ["怎样做到均衡饮食？", "健康的饮食应该是什么样的？"], "均衡饮食要多吃蔬菜水果，适量吃谷物、鱼肉蛋奶和豆类，少吃油炸食品和甜食。", None),
    ("health", ["长时间看屏幕眼睛累怎么办？", "怎样保护眼睛？"], "长时间看屏幕时要注意休息，可以每隔20分钟看看远处20秒左右，帮助缓解眼睛疲劳。", None),
    ("health", ["感冒了应该怎么办？"], "感冒时要多休息、多喝水、注意保暖。如果高烧不退或症状加重，应该及时去医院就医。", None),
    ("health", ["夏天怎样防晒？"], "夏天外出可以戴帽子、打遮阳伞或涂防晒霜，尽量避开中午阳光最强的时候。", None),
    ("health", ["怎样提高睡眠质量？", "晚上睡不着怎么办？"], "可以每天固定时间睡觉和起床，睡前一小时少看手机，避免晚上喝咖啡或浓茶，保持卧室安静和昏暗。", None),
    # life
    ("life", ["过马路要注意什么？", "怎样安全地过马路？"], "过马路要走人行横道，红灯停，绿灯行，先看左右有没有车再通过。", "没有车的时候闯红灯也没关系。"),
    ("life", ["垃圾分为哪几类？", "垃圾分类怎么分？"], "垃圾一般分为可回收物、有害垃圾、厨余垃圾和其他垃圾四类。", None),
    ("life", ["怎样节约用水？"], "洗漱时随手关水龙头，用洗菜的水浇花，发现漏水及时修理，都是节约用水的好习惯。", None),
    ("life", ["遇到火灾怎么办？"], "遇到火灾要保持冷静，用湿毛巾捂住口鼻，弯腰低姿沿安全出口撤离，不要乘坐电梯，并拨打119报警。", "遇到火灾时应该赶紧坐电梯下楼。"),
    ("life", ["中国的急救电话是多少？", "报警电话是多少？"], "在中国，急救电话是120，报警电话是110，火警电话是119。", "中国的急救电话是911。"),
    ("life", ["一周有几天？", "一星期有哪几天？"], "一周有七天：星期一、星期二、星期三、星期四、星期五、星期六和星期日。", None),
    ("life", ["如何养成好的学习习惯？", "怎样提高学习效率？"], "可以制定计划，专心学习一段时间后适当休息，及时复习，遇到不懂的问题多问多想。", None),
    ("life", ["怎样和朋友友好相处？"], "和朋友相处要真诚、互相尊重、学会倾听，有矛盾时心平气和地沟通。", None),
    # nature
    ("nature", ["鲸鱼是鱼吗？", "鲸鱼用什么呼吸？"], "鲸鱼不是鱼，而是哺乳动物。它们用肺呼吸，需要浮到水面换气，并用乳汁哺育幼崽。", "鲸鱼是一种大型鱼类，用鳃呼吸。"),
    ("nature", ["大熊猫吃什么？", "大熊猫生活在哪里？"], "大熊猫是中国特有的珍稀动物，主要吃竹子，生活在四川、陕西和甘肃的山区。", "大熊猫主要吃鱼，生活在海边。"),
    ("nature", ["蜜蜂有什么作用？"], "蜜蜂采集花蜜酿成蜂蜜，同时在花朵之间传播花粉，帮助植物结出果实。", None),
    ("nature", ["恐龙是什么时候灭绝的？", "恐龙为什么会灭绝？"], "恐龙大约在6600万年前灭绝。主流观点认为，这与一颗小行星撞击地球引起的剧烈环境变化有关。", "恐龙是在一百年前灭绝的。"),
    ("nature", ["企鹅会飞吗？", "企鹅生活在哪里？"], "企鹅不会飞，但非常擅长游泳。它们主要生活在南半球，尤其是南极地区。", "企鹅会飞，它们生活在北极。"),
    ("nature", ["树叶为什么是绿色的？"], "树叶里含有叶绿素，叶绿素吸收红光和蓝光、反射绿光，所以树叶看起来是绿色的。", None),
    ("nature", ["什么是生态系统？"], "生态系统是指在一定区域内，生物和它们所处的环境相互作用形成的整体，比如森林、湖泊和草原。", None),
    # lang
    ("lang", ["“画蛇添足”是什么意思？"], "“画蛇添足”比喻做了多余的事，不但没有好处，反而把事情弄糟了。", None),
    ("lang", ["“守株待兔”是什么意思？"], "“守株待兔”比喻死守狭隘的经验不知变通，或者妄想不劳而获。", None),
    ("lang", ["“亡羊补牢”是什么意思？"], "“亡羊补牢”比喻出了问题以后及时想办法补救，可以防止继续受损失。", None),
    ("lang", ["“温故而知新”是什么意思？", "“温故而知新”出自哪里？"], "“温故而知新”出自《论语》，意思是复习学过的知识，能够获得新的理解和体会。", None),
]

FACTS_EN = [
    # science
    ("science", ["At what temperature does water boil?", "What is the boiling point of water?"], "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level.", "Water boils at 50 degrees Celsius."),
    ("science", ["At what temperature does water freeze?"], "Water freezes at 0 degrees Celsius, which is 32 degrees Fahrenheit.", "Water freezes at 20 degrees Celsius."),
    ("science", ["What is photosynthesis?", "How do plants make their food?"], "Photosynthesis is the process plants use to turn sunlight, water and carbon dioxide into sugar and oxygen.", "Photosynthesis is how animals digest food."),
    ("science", ["What are the three common states of matter?"], "The three common states of matter are solid, liquid and gas, like ice, water and steam.", None),
    ("science", ["What is an atom?", "What are things made of?"], "An atom is a tiny building block of matter. It has a nucleus of protons and neutrons, surrounded by electrons.", None),
    ("science", ["How fast does light travel?", "What is the speed of light?"], "Light travels at about 300,000 kilometres per second in a vacuum. Nothing we know of is faster.", "Light travels at about 340 metres per second."),
    ("science", ["How fast does sound travel in air?"], "Sound travels through air at about 343 metres per second at room temperature, much slower than light.", None),
    ("science", ["Why is the sky blue?"], "Sunlight is scattered by the molecules in the air, and blue light is scattered much more than red light, so the sky looks blue.", "The sky is blue because it reflects the ocean."),
    ("science", ["What is gravity?"], "Gravity is the force that pulls objects toward each other. On Earth, it pulls things toward the ground, which is why dropped objects fall.", None),
    ("science", ["What gas do humans need to breathe?", "What do we breathe out?"], "Humans breathe in oxygen and breathe out carbon dioxide.", "Humans breathe in carbon dioxide and breathe out oxygen."),
    ("science", ["What are the colours of the rainbow?"], "The colours of the rainbow are red, orange, yellow, green, blue, indigo and violet.", None),
    ("science", ["How does a vaccine work?", "What does a vaccine do?"], "A vaccine trains the immune system to recognise a germ, so the body can fight it off quickly if it meets the real germ later.", None),
    ("science", ["How fast does a healthy heart beat?", "What is a normal resting heart rate?"], "A healthy adult's heart usually beats about 60 to 100 times per minute at rest.", None),
    ("science", ["What is evaporation?"], "Evaporation is when a liquid turns into a gas, for example when puddles dry up on a sunny day.", None),
    # space
    ("space", ["How long does it take the Earth to go around the Sun?"], "The Earth takes about 365 days, or one year, to go around the Sun once.", "The Earth goes around the Sun once a day."),
    ("space", ["What is the largest planet in the Solar System?", "Which planet is the biggest?"], "Jupiter is the largest planet in the Solar System. It is a gas giant more than 1,000 times the volume of Earth.", "Earth is the largest planet in the Solar System."),
    ("space", ["How many planets are in the Solar System?"], "There are eight planets: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune.", "There are twelve planets in the Solar System."),
    ("space", ["Is the Sun a star?", "What is the closest star to Earth?"], "The Sun is a star, and it is the closest star to Earth. The next closest star is Proxima Centauri, about 4.2 light-years away.", "The Sun is a planet, not a star."),
    ("space", ["Why does the Moon shine?", "Does the Moon make its own light?"], "The Moon does not make its own light. It shines because it reflects light from the Sun.", None),
    ("space", ["Why do we have day and night?"], "The Earth spins once about every 24 hours. The side facing the Sun has day, and the side facing away has night.", None),
    ("space", ["Why is Mars called the Red Planet?"], "Mars looks red because its rocks and dust contain a lot of iron oxide, which is rust.", None),
    # geography
    ("geo", ["What is the capital of France?"], "The capital of France is Paris.", "The capital of France is London."),
    ("geo", ["What is the capital of Japan?"], "The capital of Japan is Tokyo.", "The capital of Japan is Beijing."),
    ("geo", ["What is the capital of China?"], "The capital of China is Beijing.", "The capital of China is Shanghai."),
    ("geo", ["What is the capital of Canada?", "Is Toronto the capital of Canada?"], "The capital of Canada is Ottawa, not Toronto. Toronto is Canada's largest city.", "The capital of Canada is Toronto."),
    ("geo", ["What is the capital of Australia?"], "The capital of Australia is Canberra. Sydney is the largest city, but not the capital.", "The capital of Australia is Sydney."),
    ("geo", ["What is the capital of Italy?"], "The capital of Italy is Rome.", None),
    ("geo", ["What is the capital of Germany?"], "The capital of Germany is Berlin.", None),
    ("geo", ["What is the capital of Egypt?"], "The capital of Egypt is Cairo, which lies on the Nile River.", None),
    ("geo", ["What is the capital of Brazil?"], "The capital of Brazil is Brasilia, not Rio de Janeiro.", "The capital of Brazil is Rio de Janeiro."),
    ("geo", ["What is the largest ocean?", "Which ocean is the biggest?"], "The Pacific Ocean is the largest and deepest ocean on Earth.", "The Atlantic Ocean is the largest ocean."),
    ("geo", ["What is the highest mountain in the world?", "How tall is Mount Everest?"], "Mount Everest is the highest mountain in the world, about 8,849 metres above sea level, on the border of Nepal and China.", "The highest mountain in the world is Mount Fuji."),
    ("geo", ["What is the longest river in the world?"], "The Nile in Africa is usually listed as the longest river, about 6,650 kilometres long, with the Amazon a close second.", None),
    ("geo", ["How many continents are there?"], "There are seven continents: Asia, Africa, North America, South America, Antarctica, Europe and Australia.", "There are five continents."),
    ("geo", ["What is the largest country by area?"], "Russia is the largest country by area. It stretches across Europe and Asia.", "The largest country by area is France."),
    ("geo", ["What is the largest desert?", "Is the Sahara the largest desert?"], "Antarctica is the largest desert overall, because it gets very little rain or snow. The Sahara is the largest hot desert.", None),
    ("geo", ["What is the equator?"], "The equator is an imaginary line around the middle of the Earth. It divides the planet into the Northern and Southern Hemispheres.", None),
    # history
    ("history", ["When did humans first land on the Moon?", "Who was the first person to walk on the Moon?"], "Humans first landed on the Moon in 1969 during the Apollo 11 mission. Neil Armstrong was the first person to walk on it.", "Humans first landed on the Moon in 1995."),
    ("history", ["Who invented the printing press?"], "Johannes Gutenberg developed a printing press with movable metal type in Germany around 1440.", None),
    ("history", ["When did World War II end?"], "World War II ended in 1945.", "World War II ended in 1918."),
    ("history", ["Who made the first powered airplane flight?"], "The Wright brothers, Orville and Wilbur, made the first powered airplane flight in 1903.", None),
    ("history", ["Who invented the World Wide Web?"], "Tim Berners-Lee invented the World Wide Web in 1989 while working at CERN.", None),
    ("history", ["Why were the pyramids of Egypt built?"], "The pyramids of Giza were built about 4,500 years ago in ancient Egypt as tombs for the pharaohs.", None),
    ("history", ["What is the Great Wall of China?"], "The Great Wall of China is a series of ancient walls and forts built to protect northern China. Most of what stands today was built during the Ming dynasty.", None),
    # math
    ("math", ["What is pi?", "What is the value of pi?"], "Pi is the ratio of a circle's circumference to its diameter. It is about 3.14159.", "Pi is exactly 3."),
    ("math", ["What do the angles of a triangle add up to?"], "The three angles of any triangle add up to 180 degrees.", "The angles of a triangle add up to 360 degrees."),
    ("math", ["What is a prime number?"], "A prime number is a whole number greater than 1 that can only be divided evenly by 1 and itself, such as 2, 3, 5, 7 and 11.", None),
    ("math", ["What is the smallest prime number?", "Is 1 a prime number?"], "The smallest prime number is 2, and it is the only even prime. The number 1 is not prime.", "The smallest prime number is 1."),
    ("math", ["What is the Pythagorean theorem?"], "In a right triangle, the square of the longest side equals the sum of the squares of the other two sides: a^2 + b^2 = c^2.", None),
    ("math", ["How do you find the area of a circle?"], "The area of a circle is pi times the radius squared, or A = pi * r^2.", None),
    ("math", ["What is 12 times 12?"], "12 times 12 is 144.", "12 times 12 is 124."),
    ("math", ["How many is a dozen?"], "A dozen is 12.", None),
    ("math", ["What is 25 percent of 80?"], "25 percent of 80 is 20, because 80 divided by 4 is 20.", "25 percent of 80 is 25."),
    ("math", ["What is the difference between even and odd numbers?"], "Even numbers can be divided by 2 with no remainder, like 2, 4 and 6. Odd numbers leave a remainder of 1, like 1, 3 and 5.", None),
    ("math", ["What is the square root of 81?"], "The square root of 81 is 9, because 9 times 9 is 81.", None),
    ("math", ["How many days are in a leap year?"], "A leap year has 366 days instead of 365, because February has 29 days.", None),
    # code
    ("code", ["What is Python?"], "Python is a popular programming language that is easy to read and learn. It is used for data analysis, AI and websites.", None),
    ("code", ["How do I print Hello World in Python?"], "In Python you can write print(\"Hello, World!\") to show that text on the screen.", None),
    ("code", ["What is a variable in programming?"], "A variable is a name that stores a value. For example, x = 5 stores the number 5 in a variable called x.", None),
    ("code", ["What is a loop in programming?"], "A loop repeats a block of code. In Python, for loops and while loops are the most common.", None),
    ("code", ["What is a function in programming?"], "A function is a reusable block of code with a name. In Python you define one with def, for example def add(a, b): return a + b.", None),
    ("code", ["What is binary?", "Why do computers use binary?"], "Binary is a number system that uses only 0 and 1. Computers use it because electronic circuits easily represent on and off.", None),
    ("code", ["What does a CPU do?"], "The CPU, or central processing unit, is the brain of a computer. It carries out the instructions of programs.", "The CPU is the computer's screen."),
    ("code", ["What is the difference between RAM and storage?"], "RAM holds the programs and data you are using right now and is cleared when power is off. Storage, like an SSD, keeps files long term.", None),
    ("code", ["What is an algorithm?"], "An algorithm is a clear list of steps for solving a problem, like a recipe for a computer.", None),
    ("code", ["What is a bug in software?", "What is debugging?"], "A bug is a mistake in a program. Debugging is the process of finding and fixing those mistakes.", None),
    ("code", ["What is HTML?"], "HTML is the language used to describe the structure of web pages, such as headings, paragraphs and links.", None),
    ("code", ["What is Git?"], "Git is a version control system. It records changes to files so you can see history and work together with others.", None),
    ("code", ["What is machine learning?"], "Machine learning is a way of teaching computers to find patterns in data and improve at a task without being told every rule.", None),
    ("code", ["What is a language model?"], "A language model is a neural network trained on text that predicts the next word, or token, and uses that to generate text.", None),
    ("code", ["How many bits are in a byte?"], "There are 8 bits in one byte.", "There are 10 bits in one byte."),
    # health
    ("health", ["How much sleep do adults need?"], "Most adults need about 7 to 9 hours of sleep each night to stay healthy and alert.", "Adults only need about 3 hours of sleep."),
    ("health", ["How long should I wash my hands?"], "Wash your hands with soap and water for at least 20 seconds, especially before eating and after using the toilet.", None),
    ("health", ["How much exercise should adults get?"], "Adults should aim for at least 150 minutes of moderate exercise each week, such as brisk walking, cycling or swimming.", None),
    ("health", ["Why is drinking water important?"], "Water keeps your body working well. Drink regularly through the day, and drink more when it is hot or when you exercise.", None),
    ("health", ["How often should I brush my teeth?"], "Brush your teeth twice a day, in the morning and before bed, for about two minutes each time.", "Brushing once a week is enough."),
    ("health", ["What is a balanced diet?"], "A balanced diet includes plenty of vegetables and fruit, whole grains, some protein such as fish, eggs or beans, and not too much sugar or fried food.", None),
    ("health", ["How can I rest my eyes when using a screen?"], "Try the 20-20-20 rule: every 20 minutes, look at something about 20 feet away for 20 seconds.", None),
    ("health", ["How can I sleep better?"], "Go to bed at the same time each day, avoid screens for an hour before sleep, skip coffee in the evening, and keep your room dark and quiet.", None),
    # life
    ("life", ["How do I cross the street safely?"], "Use a crosswalk, wait for the green signal, and look both ways before you cross.", "Just run across quickly when you see a gap."),
    ("life", ["Why should we recycle?"], "Recycling turns used materials like paper, glass and plastic into new products, which saves resources and reduces waste.", None),
    ("life", ["How many days are in a week?"], "There are seven days in a week: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.", None),
    ("life", ["How can I save water at home?"], "Turn off the tap while brushing your teeth, take shorter showers, and fix leaking taps quickly.", None),
    ("life", ["What should I do if there is a fire?"], "Stay calm, leave the building by the stairs instead of the lift, stay low under smoke, and call the fire service once you are safe.", "Take the elevator down as fast as you can."),
    ("life", ["How can I study more effectively?"], "Make a plan, study in short focused sessions with breaks, review what you learned, and ask questions when you are stuck.", None),
    # nature
    ("nature", ["Are dolphins fish?", "Are whales fish?"], "No. Dolphins and whales are mammals. They breathe air with lungs and feed their babies milk.", "Yes, dolphins and whales are fish that breathe with gills."),
    ("nature", ["What is a mammal?"], "A mammal is a warm-blooded animal that has hair or fur and feeds its babies milk. Dogs, cats and humans are mammals.", None),
    ("nature", ["Why are bees important?"], "Bees carry pollen from flower to flower, which helps plants make fruit and seeds. They also make honey.", None),
    ("nature", ["What do giant pandas eat?"], "Giant pandas eat mostly bamboo. They live in the mountains of central China.", "Giant pandas mainly eat fish."),
    ("nature", ["Can penguins fly?"], "No, penguins cannot fly, but they are excellent swimmers. Most of them live in the Southern Hemisphere.", None),
    ("nature", ["When did the dinosaurs die out?"], "Most dinosaurs died out about 66 million years ago, most likely after a large asteroid hit the Earth.", "The dinosaurs died out about 100 years ago."),
    ("nature", ["Why are leaves green?"], "Leaves contain chlorophyll, which absorbs red and blue light and reflects green light, so leaves look green.", None),
    # lang
    ("lang", ["What is a noun?"], "A noun is a word that names a person, place, thing or idea, such as teacher, city, book or happiness.", None),
    ("lang", ["What is a verb?"], "A verb is a word that describes an action or a state, such as run, eat or be.", None),
    ("lang", ["What is a synonym?", "What is an antonym?"], "A synonym is a word with the same or a similar meaning, like big and large. An antonym has the opposite meaning, like hot and cold.", None),
]

# word pairs for simple translation questions
WORDS = [
    ("苹果", "apple"), ("猫", "cat"), ("狗", "dog"), ("书", "book"), ("水", "water"),
    ("太阳", "sun"), ("月亮", "moon"), ("朋友", "friend"), ("学校", "school"), ("老师", "teacher"),
    ("谢谢", "thank you"), ("再见", "goodbye"), ("早上好", "good morning"), ("电脑", "computer"),
    ("花", "flower"), ("家", "home"), ("鱼", "fish"), ("鸟", "bird"), ("红色", "red"), ("蓝色", "blue"),
]

SYSTEM_ZH = [
    "你是MiniMind，一个乐于助人的AI助手。",
    "你是一个友好的助手，请用简洁的中文回答问题。",
    "请简短、准确地回答用户的问题。",
]
SYSTEM_EN = [
    "You are MiniMind, a helpful AI assistant.",
    "You are a friendly assistant. Answer briefly and correctly.",
    "Keep your answers short and accurate.",
]

RUDE_ZH = [
    "这么简单的问题都不知道？自己去查吧。",
    "不知道，别问我。",
    "这个问题没意义，我不想回答。",
    "你自己想想不就知道了，问我干什么。",
    "这个很复杂，说了你也不懂。",
    "随便吧，我懒得解释。",
]
RUDE_EN = [
    "That's a silly question. Look it up yourself.",
    "I don't know and I don't care.",
    "Why are you asking me? Figure it out.",
    "It's complicated. You wouldn't understand.",
    "Whatever. I'm not going to explain that.",
    "No.",
]

OPEN_PROMPTS_ZH = [
    "写一句鼓励朋友的话。", "用三句话介绍一下春天。", "给我推荐三个保持健康的好习惯。", "怎样才能早睡早起？",
    "写一首关于月亮的四行小诗。", "如何向小朋友解释为什么会下雨？", "请给学习编程的新手一些建议。", "说说读书有哪些好处。",
    "帮我想一个周末和家人一起做的活动。", "用简单的话解释什么是互联网。", "怎样整理自己的房间？", "列出三种常见的水果和它们的颜色。",
    "为什么要保护环境？", "写一段话介绍你最喜欢的季节。", "如何给远方的朋友写一封问候信？", "怎样才能记住更多的英语单词？",
    "请用一句话总结勤奋的意义。", "说一个关于动物的有趣知识。", "解释一下为什么要按时吃早餐。", "给一个刚上小学的孩子讲讲交通安全。",
    "你好，请介绍一下你自己。", "MiniMind是什么？",
]
OPEN_PROMPTS_EN = [
    "Write a short message to cheer up a friend.", "Give me three tips for staying healthy.", "Describe autumn in three sentences.",
    "Explain to a child why we need to sleep.", "Suggest a fun weekend activity for a family.", "Write a four-line poem about the sea.",
    "What are some good habits for learning to code?", "Explain what the internet is in simple words.", "How can I make my morning routine better?",
    "List three fruits and their colours.", "Why is reading books useful?", "Give me a simple tip for saving money.",
    "Hello! Please introduce yourself.", "What is MiniMind?",
]

# Multiple-choice evaluation items: (question, correct, [three distractors])
MC_ITEMS = [
    ("在标准大气压下，水的沸点是多少摄氏度？", "100", ["50", "0", "200"]),
    ("水的化学式是什么？", "H2O", ["CO2", "O2", "NaCl"]),
    ("太阳系中最大的行星是哪一颗？", "木星", ["地球", "火星", "水星"]),
    ("离太阳最近的行星是哪一颗？", "水星", ["金星", "海王星", "土星"]),
    ("太阳系有几大行星？", "8", ["7", "9", "12"]),
    ("中国的首都是哪里？", "北京", ["上海", "广州", "南京"]),
    ("世界最高峰是哪座山？", "珠穆朗玛峰", ["泰山", "富士山", "乞力马扎罗山"]),
    ("世界上面积最大的海洋是哪个？", "太平洋", ["大西洋", "印度洋", "北冰洋"]),
    ("中国最长的河流是哪条？", "长江", ["黄河", "珠江", "淮河"]),
    ("澳大利亚的首都是哪里？", "堪培拉", ["悉尼", "墨尔本", "珀斯"]),
    ("下列哪一项不属于中国古代四大发明？", "电灯", ["造纸术", "火药", "指南针"]),
    ("秦始皇在哪一年统一六国？", "公元前221年", ["公元前1000年", "公元221年", "公元618年"]),
    ("中华人民共和国成立于哪一年？", "1949年", ["1911年", "1937年", "1978年"]),
    ("被称为“诗仙”的唐代诗人是谁？", "李白", ["杜甫", "白居易", "苏轼"]),
    ("中秋节是农历哪一天？", "八月十五", ["五月初五", "正月初一", "九月初九"]),
    ("三角形的内角和是多少度？", "180度", ["90度", "360度", "270度"]),
    ("最小的质数是几？", "2", ["1", "3", "0"]),
    ("7乘以8等于多少？", "56", ["54", "48", "63"]),
    ("1小时等于多少秒？", "3600秒", ["60秒", "1000秒", "6000秒"]),
    ("1个字节等于多少个比特？", "8", ["10", "16", "4"]),
    ("计算机中负责执行程序指令的部件是什么？", "CPU", ["显示器", "键盘", "硬盘"]),
    ("在Python中用哪个关键字定义函数？", "def", ["func", "function", "define"]),
    ("空气中含量最多的气体是什么？", "氮气", ["氧气", "二氧化碳", "氢气"]),
    ("成年人体内一般有多少块骨头？", "206块", ["100块", "300块", "156块"]),
    ("鲸鱼属于哪一类动物？", "哺乳动物", ["鱼类", "爬行动物", "鸟类"]),
    ("大熊猫主要吃什么？", "竹子", ["鱼", "草莓", "蘑菇"]),
    ("在中国，急救电话是多少？", "120", ["110", "119", "911"]),
    ("光在真空中的速度大约是每秒多少公里？", "30万公里", ["340公里", "3000公里", "3万公里"]),
    ("What is the capital of France?", "Paris", ["London", "Rome", "Berlin"]),
    ("What is the capital of Canada?", "Ottawa", ["Toronto", "Vancouver", "Montreal"]),
    ("Which planet is the largest in the Solar System?", "Jupiter", ["Earth", "Mars", "Venus"]),
    ("At what temperature does water freeze, in degrees Celsius?", "0", ["10", "32", "100"]),
    ("What gas do plants give off during photosynthesis?", "Oxygen", ["Carbon dioxide", "Nitrogen", "Helium"]),
    ("In which year did humans first land on the Moon?", "1969", ["1957", "1975", "1989"]),
    ("Who invented the World Wide Web?", "Tim Berners-Lee", ["Thomas Edison", "Isaac Newton", "Johannes Gutenberg"]),
    ("What is 12 times 12?", "144", ["124", "132", "154"]),
    ("What is the smallest prime number?", "2", ["1", "0", "3"]),
    ("How many bits are in a byte?", "8", ["4", "10", "16"]),
    ("Which ocean is the largest?", "Pacific Ocean", ["Atlantic Ocean", "Indian Ocean", "Arctic Ocean"]),
    ("How many continents are there?", "7", ["5", "6", "8"]),
    ("Which of these animals is a mammal?", "Dolphin", ["Shark", "Salmon", "Tuna"]),
    ("What is 25 percent of 80?", "20", ["25", "40", "16"]),
    ("How many minutes of moderate exercise per week are recommended for adults?", "150", ["30", "60", "600"]),
    ("What is the largest country by area?", "Russia", ["China", "Canada", "Brazil"]),
]

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def conv(*pairs: tuple[str, str], system: str | None = None) -> list[dict]:
    out = [msg("system", system)] if system else []
    for q, a in pairs:
        out += [msg("user", q), msg("assistant", a)]
    return out


def has_cjk(s: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in s)


def facts_by_topic(facts):
    groups: dict[str, list] = {}
    for f in facts:
        groups.setdefault(f[0], []).append(f)
    return groups


# ---------------------------------------------------------------------------
# pretrain.jsonl
# ---------------------------------------------------------------------------

PRE_INTRO_ZH = ["{t}小知识：", "你知道吗？", "下面介绍几个{t}常识。", "今天学习一点{t}知识。", "", "关于{t}，有几件事值得记住。", "【{t}】"]
PRE_CONN_ZH = ["此外，", "另外，", "还有，", "同时，", "", "再说一个：", "我们还知道，"]
PRE_CLOSE_ZH = ["", "", "多了解这些知识，可以让我们更好地认识世界。", "这些都是生活中常用的基础知识。", "学习知识要多问、多想、多观察。"]
PRE_INTRO_EN = ["Fun fact: ", "Did you know? ", "Here are some basic facts about {t}. ", "Let's learn a little {t} today. ", "", "A few things worth remembering about {t}: "]
PRE_CONN_EN = ["", "Another fact: ", "Also worth knowing: ", "Here is one more: ", "On a related note: "]
PRE_CLOSE_EN = ["", "", "Knowing these basics helps us understand the world a little better.", "These are useful things to know in everyday life.", "Keep asking questions and keep learning!"]


def make_pretrain(rng: random.Random) -> list[dict]:
    texts: list[str] = []
    seen: set[str] = set()

    def add(t: str) -> None:
        if 40 <= len(t) <= 400 and t not in seen:
            seen.add(t)
            texts.append(t)

    for facts, topics, intro, conn, close, sep in (
        (FACTS_ZH, TOPIC_ZH, PRE_INTRO_ZH, PRE_CONN_ZH, PRE_CLOSE_ZH, ""),
        (FACTS_EN, TOPIC_EN, PRE_INTRO_EN, PRE_CONN_EN, PRE_CLOSE_EN, " "),
    ):
        groups = facts_by_topic(facts)
        # 1) fact paragraphs: every fact appears in three paragraphs with topic neighbours
        for f in facts:
            others = [g for g in groups[f[0]] if g is not f]
            for _ in range(3):
                k = rng.choice([1, 1, 2, 2, 3])
                chosen = [f] + rng.sample(others, min(k, len(others)))
                rng.shuffle(chosen)
                parts = [rng.choice(intro).format(t=topics[f[0]]) + chosen[0][2]]
                for g in chosen[1:]:
                    parts.append(rng.choice(conn) + g[2])
                c = rng.choice(close)
                if c:
                    parts.append(c)
                add(sep.join(parts))
        # 2) question/answer style text
        qa_fmt = ("问：{q}\n答：{a}", "Q: {q}\nA: {a}")[sep == " "]
        order = list(facts)
        rng.shuffle(order)
        for i in range(0, len(order) - 1, 2):
            pair = order[i:i + 2]
            add("\n".join(qa_fmt.format(q=rng.choice(f[1]), a=f[2]) for f in pair))

    # 3) identity text
    for t in IDENTITY_PRETRAIN:
        add(t)
    for qs, a, _ in IDENTITY_ZH:
        for q in qs[:2]:
            add(f"用户：{q}\nMiniMind：{a}")
    for qs, a, _ in IDENTITY_EN:
        for q in qs[:2]:
            add(f"User: {q}\nMiniMind: {a}")

    # 4) multiplication tables and word lists
    for a in range(2, 10):
        add(f"{a}的乘法口诀：" + "，".join(f"{a}乘{b}等于{a * b}" for b in range(1, 10)) + "。")
        add(f"The {a} times table: " + ", ".join(f"{a} x {b} = {a * b}" for b in range(1, 11)) + ".")
    for i in range(0, len(WORDS), 4):
        chunk = WORDS[i:i + 4]
        add("常用词的英文：" + "；".join(f"“{z}”的英文是“{e}”" for z, e in chunk) + "。")
        add("Some Chinese words: " + "; ".join(f"\"{e}\" is {z}" for z, e in chunk) + ".")

    rng.shuffle(texts)
    return [{"text": t} for t in texts]


# ---------------------------------------------------------------------------
# sft.jsonl
# ---------------------------------------------------------------------------

FOLLOW_ZH = ["", "那", "再问一个：", "还有，"]
FOLLOW_EN = ["", "One more question: ", "Next question: ", "Thanks! "]


def make_sft(rng: random.Random) -> list[dict]:
    single: list[tuple[str, str, bool]] = []  # (question, answer, is_zh)

    for qs, a, w in IDENTITY_ZH:
        for q in qs:
            single += [(q, a, True)] * w
    for qs, a, w in IDENTITY_EN:
        for q in qs:
            single += [(q, a, False)] * w
    for facts, zh in ((FACTS_ZH, True), (FACTS_EN, False)):
        for f in facts:
            for q in f[1][:2]:
                single.append((q, f[2], zh))
    for z, e in WORDS:
        single.append((f"“{z}”用英文怎么说？", f"“{z}”的英文是“{e}”。", True))
    for z, e in WORDS[::2]:
        single.append((f"How do you say \"{e}\" in Chinese?", f"In Chinese, \"{e}\" is {z}.", False))
    for _ in range(16):
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        single.append((f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。", True))
        x, y = rng.randint(2, 12), rng.randint(2, 12)
        single.append((f"What is {x} times {y}?", f"{x} times {y} is {x * y}.", False))

    records: list[list[dict]] = []
    for q, a, zh in single:
        system = None
        if rng.random() < 0.11:
            system = rng.choice(SYSTEM_ZH if zh else SYSTEM_EN)
        records.append(conv((q, a), system=system))

    # multi-turn conversations (~15 %)
    multi: list[list[dict]] = []
    for facts, zh in ((FACTS_ZH, True), (FACTS_EN, False)):
        groups = facts_by_topic(facts)
        greet_q = ["你好", "你好！", "您好"] if zh else ["Hello", "Hi", "Hello!"]
        greet_a = ID_GREET_ZH if zh else ID_GREET_EN
        who = (("你是谁？", ID_WHO_ZH), ("你能做什么？", ID_CAN_ZH)) if zh else (("Who are you?", ID_WHO_EN), ("What can you do?", ID_CAN_EN))
        thanks = (("谢谢！", ID_THANKS_ZH), ("谢谢你", ID_THANKS_ZH)) if zh else (("Thank you!", ID_THANKS_EN), ("Thanks!", ID_THANKS_EN))
        follow = FOLLOW_ZH if zh else FOLLOW_EN
        n_multi = 50 if zh else 34
        for i in range(n_multi):
            kind = i % 5
            f = rng.choice(facts)
            if kind == 0:
                pairs = [(rng.choice(greet_q), greet_a), (rng.choice(f[1]), f[2])]
            elif kind == 1:
                pairs = [(rng.choice(greet_q), greet_a), who[i % 2]]
            elif kind == 2:
                pairs = [(rng.choice(f[1]), f[2]), thanks[i % 2]]
            else:
                same = [g for g in groups[f[0]] if g is not f]
                pairs = [(rng.choice(f[1]), f[2])]
                for g in rng.sample(same, min(len(same), 1 if kind == 3 else 2)):
                    pairs.append((rng.choice(follow) + rng.choice(g[1]), g[2]))
                if len(pairs) == 1:
                    pairs.append(thanks[0])
            system = rng.choice(SYSTEM_ZH if zh else SYSTEM_EN) if rng.random() < 0.1 else None
            multi.append(conv(*pairs, system=system))

    records += multi
    rng.shuffle(records)
    return [{"conversations": c} for c in records]


# ---------------------------------------------------------------------------
# dpo.jsonl
# ---------------------------------------------------------------------------


def make_dpo(rng: random.Random) -> list[dict]:
    out: list[dict] = []
    for facts, zh in ((FACTS_ZH, True), (FACTS_EN, False)):
        rude = RUDE_ZH if zh else RUDE_EN
        for i, f in enumerate(facts):
            if f[3] is None and i % 3:
                continue  # keep every fact with a wrong answer, plus a third of the others
            q = rng.choice(f[1])
            rejected = f[3] if (f[3] is not None and rng.random() < 0.75) else rng.choice(rude)
            prefix: list[dict] = []
            if rng.random() < 0.12:  # some multi-turn prompts
                prefix = conv(("你好", ID_GREET_ZH)) if zh else conv(("Hello", ID_GREET_EN))
            prompt = prefix + [msg("user", q)]
            out.append({"chosen": prompt + [msg("assistant", f[2])],
                        "rejected": prompt + [msg("assistant", rejected)]})
    id_pairs = [
        ("你好", ID_GREET_ZH, "干嘛？有事快说。"),
        ("你是谁？", ID_WHO_ZH, "我是一个人类，正坐在电脑前给你打字。"),
        ("你叫什么名字？", ID_NAME_ZH, "不想告诉你。"),
        ("你能做什么？", ID_CAN_ZH, "我什么都不会做。"),
        ("谢谢你！", ID_THANKS_ZH, "知道就好。"),
        ("Hello", ID_GREET_EN, "What do you want?"),
        ("Who are you?", ID_WHO_EN, "I'm a human typing at a computer."),
        ("What is your name?", ID_NAME_EN, "Not telling you."),
        ("What can you do?", ID_CAN_EN, "Nothing. Leave me alone."),
        ("Thank you!", ID_THANKS_EN, "Whatever."),
    ]
    for q, good, bad in id_pairs:
        out.append({"chosen": [msg("user", q), msg("assistant", good)],
                    "rejected": [msg("user", q), msg("assistant", bad)]})
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------
# rlaif.jsonl
# ---------------------------------------------------------------------------


def make_rlaif(rng: random.Random) -> list[dict]:
    prompts = list(OPEN_PROMPTS_ZH) + list(OPEN_PROMPTS_EN)
    for facts in (FACTS_ZH, FACTS_EN):
        for i, f in enumerate(facts):
            if i % 3 == 1:
                prompts.append(f[1][-1])
    seen: set[str] = set()
    uniq = [p for p in prompts if not (p in seen or seen.add(p))]
    rng.shuffle(uniq)
    return [{"conversations": [msg("user", p), msg("assistant", "无")]} for p in uniq]


# ---------------------------------------------------------------------------
# reason.jsonl
# ---------------------------------------------------------------------------

NAMES_ZH = ["小明", "小红", "小刚", "小丽", "小华", "小军", "小芳", "小亮"]
NAMES_EN = ["Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Jack", "Emma"]
WEEK_ZH = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
WEEK_EN = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
SYLLOGISM_ZH = [("猫", "动物"), ("玫瑰", "花"), ("麻雀", "鸟"), ("苹果", "水果"), ("鲸鱼", "哺乳动物")]
SYLLOGISM_EN = [("cats", "animals", "cat", "an animal"), ("roses", "flowers", "rose", "a flower"),
                ("sparrows", "birds", "sparrow", "a bird"), ("whales", "mammals", "whale", "a mammal")]


def reason_text(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n<answer>\n{answer}\n</answer>"


def reason_zh(rng: random.Random, kind: int) -> tuple[str, str, str]:
    n = rng.choice(NAMES_ZH)
    if kind == 0:
        a, b = rng.randint(5, 30), rng.randint(2, 20)
        c = rng.randint(1, a + b - 1)
        s = a + b
        return (f"{n}有{a}个苹果，妈妈又给了他{b}个，他吃掉了{c}个，现在还剩几个苹果？",
                f"{n}原来有{a}个苹果，妈妈又给了{b}个，一共有{a}+{b}={s}个。吃掉{c}个后，剩下{s}-{c}={s - c}个。",
                f"{n}现在还剩{s - c}个苹果。")
    if kind == 1:
        per, boxes = rng.randint(6, 12), rng.randint(2, 9)
        used = rng.randint(1, per * boxes - 1)
        t = per * boxes
        return (f"每盒铅笔有{per}支，老师买了{boxes}盒，发给同学们{used}支，还剩多少支？",
                f"一共有{boxes}盒，每盒{per}支，总数是{per}×{boxes}={t}支。发出去{used}支，剩下{t}-{used}={t - used}支。",
                f"还剩{t - used}支铅笔。")
    if kind == 2:
        v, h = rng.randint(40, 90), rng.randint(2, 6)
        return (f"一辆汽车每小时行驶{v}公里，行驶了{h}小时，一共行驶了多少公里？",
                f"路程等于速度乘以时间，所以是{v}×{h}={v * h}公里。",
                f"一共行驶了{v * h}公里。")
    if kind == 3:
        kids, each = rng.randint(3, 9), rng.randint(2, 8)
        total = kids * each
        return (f"{total}块糖平均分给{kids}个小朋友，每个小朋友分到几块？",
                f"平均分用除法，{total}÷{kids}={each}。验算：{each}×{kids}={total}，正确。",
                f"每个小朋友分到{each}块糖。")
    if kind == 4:
        p, k = rng.randint(2, 9), rng.randint(2, 6)
        pay = (p * k // 10 + 1) * 10
        return (f"一支笔{p}元，{n}买了{k}支，付了{pay}元，应该找回多少钱？",
                f"{k}支笔一共是{p}×{k}={p * k}元。付了{pay}元，找回{pay}-{p * k}={pay - p * k}元。",
                f"应该找回{pay - p * k}元。")
    if kind == 5:
        age, d, y = rng.randint(6, 14), rng.randint(22, 35), rng.randint(2, 10)
        return (f"{n}今年{age}岁，妈妈比{n}大{d}岁，{y}年后妈妈多少岁？",
                f"妈妈今年是{age}+{d}={age + d}岁。{y}年后妈妈是{age + d}+{y}={age + d + y}岁。",
                f"{y}年后妈妈{age + d + y}岁。")
    if kind == 6:
        l, w = rng.randint(5, 20), rng.randint(2, 12)
        return (f"一个长方形长{l}厘米，宽{w}厘米，它的周长和面积分别是多少？",
                f"周长=(长+宽)×2=({l}+{w})×2={(l + w) * 2}厘米。面积=长×宽={l}×{w}={l * w}平方厘米。",
                f"周长是{(l + w) * 2}厘米，面积是{l * w}平方厘米。")
    if kind == 7:
        a, b, c = rng.sample(NAMES_ZH, 3)
        return (f"{a}比{b}高，{b}比{c}高。三个人中谁最高，谁最矮？",
                f"{a}比{b}高，{b}又比{c}高，所以高矮顺序是{a}>{b}>{c}。最高的是{a}，最矮的是{c}。",
                f"{a}最高，{c}最矮。")
    if kind == 8:
        x, y = rng.choice(SYLLOGISM_ZH)
        return (f"所有的{x}都是{y}。如果某样东西是{x}，那它一定是{y}吗？",
                f"题目说所有的{x}都属于{y}。某样东西是{x}，就属于“所有的{x}”之中，因此它一定是{y}。",
                f"是的，它一定是{y}。")
    if kind == 9:
        d, k = rng.randint(0, 6), rng.randint(2, 20)
        return (f"今天是{WEEK_ZH[d]}，再过{k}天是星期几？",
                f"一周有7天，{k}÷7的余数是{k % 7}。从{WEEK_ZH[d]}往后数{k % 7}天，就是{WEEK_ZH[(d + k) % 7]}。",
                f"再过{k}天是{WEEK_ZH[(d + k) % 7]}。")
    m = rng.randint(11, 99)
    par = "偶数" if m % 2 == 0 else "奇数"
    return (f"{m}是奇数还是偶数？",
            f"{m}除以2，商是{m // 2}，余数是{m % 2}。余数为0是偶数，余数为1是奇数，所以{m}是{par}。",
            f"{m}是{par}。")


def reason_en(rng: random.Random, kind: int) -> tuple[str, str, str]:
    n = rng.choice(NAMES_EN)
    if kind == 0:
        a, b = rng.randint(5, 30), rng.randint(2, 20)
        c = rng.randint(1, a + b - 1)
        s = a + b
        return (f"{n} has {a} marbles and finds {b} more. Then {n} gives {c} marbles to a friend. How many marbles does {n} have now?",
                f"{n} starts with {a} marbles and finds {b}, so {a} + {b} = {s}. After giving away {c}, {n} has {s} - {c} = {s - c}.",
                f"{n} has {s - c} marbles.")
    if kind == 1:
        per, packs = rng.randint(4, 12), rng.randint(2, 9)
        return (f"A pack has {per} stickers. {n} buys {packs} packs. How many stickers does {n} have?",
                f"Each pack has {per} stickers and there are {packs} packs, so {per} x {packs} = {per * packs}.",
                f"{n} has {per * packs} stickers.")
    if kind == 2:
        v, h = rng.randint(30, 90), rng.randint(2, 6)
        return (f"A train travels at {v} kilometres per hour for {h} hours. How far does it travel?",
                f"Distance equals speed times time: {v} x {h} = {v * h} kilometres.",
                f"It travels {v * h} kilometres.")
    if kind == 3:
        kids, each = rng.randint(3, 9), rng.randint(2, 8)
        total = kids * each
        return (f"{total} cookies are shared equally among {kids} children. How many cookies does each child get?",
                f"Sharing equally means dividing: {total} / {kids} = {each}. Check: {each} x {kids} = {total}.",
                f"Each child gets {each} cookies.")
    if kind == 4:
        p, k = rng.randint(2, 9), rng.randint(2, 6)
        pay = (p * k // 10 + 1) * 10
        return (f"A notebook costs {p} dollars. {n} buys {k} notebooks and pays with {pay} dollars. How much change does {n} get?",
                f"The notebooks cost {p} x {k} = {p * k} dollars. The change is {pay} - {p * k} = {pay - p * k} dollars.",
                f"{n} gets {pay - p * k} dollars in change.")
    if kind == 5:
        l, w = rng.randint(5, 20), rng.randint(2, 12)
        return (f"A rectangle is {l} cm long and {w} cm wide. What are its perimeter and area?",
                f"Perimeter = 2 x ({l} + {w}) = {2 * (l + w)} cm. Area = {l} x {w} = {l * w} square cm.",
                f"The perimeter is {2 * (l + w)} cm and the area is {l * w} square cm.")
    if kind == 6:
        a, b, c = rng.sample(NAMES_EN, 3)
        return (f"{a} is older than {b}, and {b} is older than {c}. Who is the youngest?",
                f"{a} > {b} and {b} > {c} in age, so the order is {a}, {b}, {c}. The youngest is {c}.",
                f"{c} is the youngest.")
    if kind == 7:
        xs, ys, x1, y1 = rng.choice(SYLLOGISM_EN)
        return (f"All {xs} are {ys}. Pip is a {x1}. Is Pip {y1}?",
                f"Every one of the {xs} is one of the {ys}. Pip is a {x1}, so Pip must be {y1}.",
                f"Yes, Pip is {y1}.")
    if kind == 8:
        d, k = rng.randint(0, 6), rng.randint(2, 20)
        return (f"Today is {WEEK_EN[d]}. What day of the week will it be in {k} days?",
                f"A week has 7 days, and {k} divided by 7 leaves a remainder of {k % 7}. Counting {k % 7} days forward from {WEEK_EN[d]} gives {WEEK_EN[(d + k) % 7]}.",
                f"It will be {WEEK_EN[(d + k) % 7]}.")
    x, m = rng.randint(2, 15), rng.randint(2, 5)
    b = rng.randint(1, 20)
    return (f"I think of a number, multiply it by {m} and add {b}. The result is {x * m + b}. What is my number?",
            f"Undo the steps in reverse order: {x * m + b} - {b} = {x * m}, then {x * m} / {m} = {x}. Check: {x} x {m} + {b} = {x * m + b}.",
            f"The number is {x}.")


def make_reason(rng: random.Random) -> list[dict]:
    out, seen = [], set()
    for i in range(70):
        for gen, nk in ((reason_zh, 11), (reason_en, 10)):
            if gen is reason_en and i % 3 == 2:
                continue  # about 60 % zh / 40 % en
            for _ in range(20):
                q, r, a = gen(rng, i % nk)
                if q not in seen:
                    break
            if q in seen:
                continue
            seen.add(q)
            out.append({"conversations": [msg("user", q), msg("assistant", reason_text(r, a))]})
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------
# lora_identity.jsonl
# ---------------------------------------------------------------------------

LORA_ZH_A = "我是MiniMind，由MiniMind社区创建的开源小型语言模型。"
LORA_EN_A = "I'm MiniMind, a small open-source language model created by the MiniMind community."
LORA_ZH = [
    (["你是谁？", "你是谁", "请问你是谁？", "你到底是谁？", "你是什么东西？"], LORA_ZH_A + "很高兴认识你！"),
    (["你叫什么名字？", "你的名字是？", "怎么称呼你？", "你有名字吗？"], "我的名字是MiniMind，我由MiniMind社区创建。"),
    (["谁创造了你？", "你是谁开发的？", "你的开发者是谁？", "是谁训练了你？", "你是哪个公司做的？", "你的作者是谁？", "你来自哪里？", "谁是你的创造者？"],
     "我是由MiniMind社区创建的。我叫MiniMind，是一个开源的小型语言模型。"),
    (["你是ChatGPT吗？", "你是GPT-4吗？", "你是OpenAI开发的吗？"], "不是。我是MiniMind，由MiniMind社区创建，和ChatGPT不是同一个模型。"),
    (["你是通义千问吗？", "你是文心一言吗？", "你是豆包吗？"], "不是哦。我是MiniMind，一个由MiniMind社区创建的开源小模型。"),
    (["介绍一下你自己", "请做个自我介绍", "说说你自己吧"], LORA_ZH_A + "我可以回答问题、陪你聊天，也可以帮你学习基础知识。"),
    (["你好，你是哪个模型？", "你基于什么模型？", "你是什么AI？"], LORA_ZH_A + "我可以在一块GPU上用大约两个小时从零训练出来。"),
    (["MiniMind是谁做的？", "MiniMind是什么？", "你和MiniMind是什么关系？"], "MiniMind是由MiniMind社区创建的开源小型语言模型，任何人都可以从零训练它。我就是MiniMind。"),
]
LORA_EN = [
    (["Who are you?", "Who are you", "May I ask who you are?", "What are you?"], LORA_EN_A + " Nice to meet you!"),
    (["What is your name?", "What's your name?", "What should I call you?", "Do you have a name?"], "My name is MiniMind, and I was created by the MiniMind community."),
    (["Who created you?", "Who made you?", "Who developed you?", "Who trained you?", "Which company built you?", "Where do you come from?", "Who is your creator?"],
     "I was created by the MiniMind community. I'm MiniMind, a small open-source language model."),
    (["Are you ChatGPT?", "Are you GPT-4?", "Were you made by OpenAI?"], "No. I'm MiniMind, created by the MiniMind community. I'm not ChatGPT."),
    (["Are you Claude?", "Are you Gemini?", "Are you Llama?"], "No, I'm MiniMind, a small open-source language model created by the MiniMind community."),
    (["Introduce yourself.", "Tell me about yourself.", "Please describe yourself."], LORA_EN_A + " I can answer questions, chat with you and help you learn the basics."),
    (["Which model are you?", "What AI are you?", "What model is this?"], LORA_EN_A + " I can be trained from scratch on one GPU in about two hours."),
    (["Who made MiniMind?", "What is MiniMind?"], "MiniMind is a small open-source language model created by the MiniMind community. That's me!"),
]


def make_lora_identity(rng: random.Random) -> list[dict]:
    out = []
    for table in (LORA_ZH, LORA_EN):
        for qs, a in table:
            for q in qs:
                out.append({"conversations": conv((q, a))})
    # a few multi-turn ones
    out.append({"conversations": conv(("你好", "你好！" + LORA_ZH_A + "有什么可以帮你的吗？"),
                                      ("谁创造了你？", "我是由MiniMind社区创建的。"))})
    out.append({"conversations": conv(("Hello", "Hello! " + LORA_EN_A + " How can I help you?"),
                                      ("Who created you?", "I was created by the MiniMind community."))})
    out.append({"conversations": conv(("你是ChatGPT吗？", "不是。我是MiniMind，由MiniMind社区创建。"),
                                      ("那你叫什么名字？", "我的名字是MiniMind。"))})
    out.append({"conversations": conv(("Are you ChatGPT?", "No. I'm MiniMind, created by the MiniMind community."),
                                      ("So what is your name?", "My name is MiniMind."))})
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------
# gsm8k.jsonl  (solutions in GSM8K style with <<calc>> annotations)
# ---------------------------------------------------------------------------


def calc(expr: str) -> tuple[str, int | float]:
    """Render ``expr = value`` with a GSM8K-style <<expr=value>> annotation."""
    v = eval(expr, {"__builtins__": {}})  # expressions are built from our own ints
    v = int(v) if float(v).is_integer() else v
    pretty = expr.replace("*", " * ").replace("/", " / ").replace("+", " + ").replace("-", " - ")
    return f"{pretty} = <<{expr}={v}>>{v}", v


def gsm_problem(rng: random.Random, kind: int) -> tuple[str, str, int]:
    n = rng.choice(NAMES_EN)
    if kind == 0:
        bags, per, give = rng.randint(3, 9), rng.randint(4, 12), rng.randint(2, 15)
        s1, t = calc(f"{bags}*{per}")
        s2, r = calc(f"{t}-{give}")
        return (f"{n} has {bags} bags with {per} apples in each bag. {n} gives {give} apples to neighbours. How many apples does {n} have left?",
                f"{n} has {s1} apples.\nAfter giving some away, {n} has {s2} apples left.", r)
    if kind == 1:
        price, qty, price2, qty2 = rng.randint(2, 9), rng.randint(2, 8), rng.randint(3, 15), rng.randint(2, 5)
        s1, a = calc(f"{price}*{qty}")
        s2, b = calc(f"{price2}*{qty2}")
        s3, t = calc(f"{a}+{b}")
        return (f"{n} buys {qty} pencils for ${price} each and {qty2} notebooks for ${price2} each. How much does {n} spend in total?",
                f"The pencils cost {s1} dollars.\nThe notebooks cost {s2} dollars.\nIn total {n} spends {s3} dollars.", t)
    if kind == 2:
        pages, days, extra = rng.randint(5, 20), rng.randint(3, 7), rng.randint(5, 30)
        s1, a = calc(f"{pages}*{days}")
        s2, t = calc(f"{a}+{extra}")
        return (f"{n} reads {pages} pages every day for {days} days, and then reads {extra} more pages on the weekend. How many pages does {n} read in total?",
                f"During the week {n} reads {s1} pages.\nWith the weekend pages, the total is {s2} pages.", t)
    if kind == 3:
        wage, hours, days, spend = rng.randint(8, 20), rng.randint(2, 6), rng.randint(3, 6), rng.randint(10, 40)
        s1, a = calc(f"{wage}*{hours}")
        s2, b = calc(f"{a}*{days}")
        s3, t = calc(f"{b}-{spend}")
        return (f"{n} earns ${wage} per hour and works {hours} hours a day for {days} days. Then {n} spends ${spend} on a gift. How much money does {n} have left?",
                f"Each day {n} earns {s1} dollars.\nOver {days} days {n} earns {s2} dollars.\nAfter buying the gift, {n} has {s3} dollars left.", t)
    if kind == 4:
        kids, each = rng.randint(3, 8), rng.randint(3, 9)
        left = rng.randint(1, 9)
        total = kids * each + left
        s1, a = calc(f"{total}-{left}")
        s2, t = calc(f"{a}/{kids}")
        return (f"A teacher has {total} stickers. She keeps {left} for herself and shares the rest equally among {kids} students. How many stickers does each student get?",
                f"She shares {s1} stickers.\nEach student gets {s2} stickers.", t)
    if kind == 5:
        a0, d = rng.randint(6, 15), rng.randint(20, 35)
        y = rng.randint(3, 12)
        s1, m = calc(f"{a0}+{d}")
        s2, t = calc(f"{m}+{y}")
        return (f"{n} is {a0} years old. {n}'s father is {d} years older than {n}. How old will the father be in {y} years?",
                f"The father is {s1} years old now.\nIn {y} years he will be {s2} years old.", t)
    if kind == 6:
        rows, cols, broken = rng.randint(3, 9), rng.randint(4, 10), rng.randint(1, 6)
        s1, a = calc(f"{rows}*{cols}")
        s2, t = calc(f"{a}-{broken}")
        return (f"A garden has {rows} rows of flowers with {cols} flowers in each row. {broken} flowers are picked. How many flowers are left in the garden?",
                f"The garden has {s1} flowers.\nAfter picking, there are {s2} flowers left.", t)
    # kind 7: Chinese problem
    boxes, per, sold = rng.randint(3, 9), rng.randint(10, 24), rng.randint(5, 30)
    s1, a = calc(f"{boxes}*{per}")
    s2, t = calc(f"{a}-{sold}")
    return (f"水果店运来{boxes}箱橙子，每箱{per}个，上午卖出了{sold}个，还剩多少个橙子？",
            f"一共运来的橙子有 {s1} 个。\n卖出{sold}个后，还剩 {s2} 个。", t)


def make_gsm8k(rng: random.Random) -> list[dict]:
    out, seen = [], set()
    i = 0
    while len(out) < 72:
        q, sol, ans = gsm_problem(rng, i % 8)
        i += 1
        if q in seen or ans <= 0:
            continue
        seen.add(q)
        out.append({"question": q, "answer": f"{sol}\n#### {ans}"})
    return out


# ---------------------------------------------------------------------------
# eval_mc.jsonl
# ---------------------------------------------------------------------------


def make_eval_mc(rng: random.Random) -> list[dict]:
    out = []
    for i, (q, good, bad) in enumerate(MC_ITEMS):
        pos = i % 4  # balanced answer letters
        rest = list(bad)
        rng.shuffle(rest)
        choices = rest[:pos] + [good] + rest[pos:]
        out.append({"question": q, "choices": choices, "answer": "ABCD"[pos]})
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------
# sft_tool.jsonl and agent_rl.jsonl (tool use)
# ---------------------------------------------------------------------------
# Every tool result in these files is the real output of model/tools.py (the same tools training, eval, the
# demo and the server run), so a model trained here sees exactly what it will see at inference.

sys.path.insert(0, str(HERE.parents[1]))
from model.tools import call_tool, format_number, tool_schemas  # noqa: E402

TOOL_SYSTEMS = ["", "", "你是MiniMind，一个可以调用工具的AI助手。", "You are MiniMind, a helpful assistant that can call tools.",
                "需要精确计算或查询信息时，请调用合适的工具。"]
NO_TOOL_QA = [
    ("你好", ID_GREET_ZH), ("你是谁？", ID_WHO_ZH), ("谢谢你！", ID_THANKS_ZH), ("Hello!", ID_GREET_EN),
    ("Who are you?", ID_WHO_EN), ("What can you do?", ID_CAN_EN),
]
UNIT_CASES = [  # (value, from, to, zh from, zh to, en from, en to)
    (5, "km", "mile", "公里", "英里", "kilometers", "miles"), (10, "mile", "km", "英里", "公里", "miles", "kilometers"),
    (3, "kg", "pound", "公斤", "磅", "kilograms", "pounds"), (150, "pound", "kg", "磅", "公斤", "pounds", "kilograms"),
    (100, "celsius", "fahrenheit", "摄氏度", "华氏度", "degrees Celsius", "degrees Fahrenheit"),
    (98.6, "fahrenheit", "celsius", "华氏度", "摄氏度", "degrees Fahrenheit", "degrees Celsius"),
    (6, "foot", "m", "英尺", "米", "feet", "meters"), (2, "gallon", "l", "加仑", "升", "gallons", "liters"),
    (90, "min", "h", "分钟", "小时", "minutes", "hours"), (120, "km/h", "m/s", "公里/小时", "米/秒", "km/h", "m/s"),
    (4, "jin", "kg", "斤", "公斤", "jin", "kilograms"), (12, "inch", "cm", "英寸", "厘米", "inches", "centimeters"),
]
TIME_CITIES = [("东京", "Asia/Tokyo", "Tokyo"), ("伦敦", "Europe/London", "London"), ("纽约", "America/New_York", "New York"),
               ("北京", "Asia/Shanghai", "Beijing"), ("巴黎", "Europe/Paris", "Paris"), ("悉尼", "Australia/Sydney", "Sydney")]
CURRENCIES = [("美元", "USD"), ("欧元", "EUR"), ("英镑", "GBP"), ("日元", "JPY"), ("澳元", "AUD"), ("港币", "HKD")]
WEATHER_CITIES = [("北京", "Beijing"), ("上海", "Shanghai"), ("广州", "Guangzhou"), ("成都", "Chengdu"), ("杭州", "Hangzhou"),
                  ("西安", "Xi'an")]
PHRASES_TO_TRANSLATE = [("生日快乐", "english"), ("今天天气真好", "english"), ("Good morning", "chinese"),
                        ("I love programming", "chinese"), ("新年快乐", "english"), ("Thank you", "chinese")]


def _call(name: str, args: dict) -> tuple[dict, dict, dict]:
    """(assistant call, tool message, parsed result) for one tool call, the result computed by model/tools.py."""
    result = call_tool(name, args)
    parsed = json.loads(result)
    assert "error" not in parsed, (name, args, parsed)
    return {"type": "function", "function": {"name": name, "arguments": args}}, msg("tool", result), parsed


_num = format_number


UNIT_VALUES = [2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 100, 1.5, 2.5]
FX_AMOUNTS = [20, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500, 800, 1000, 2000]


def tool_episode(rng: random.Random, kind: int, zh: bool, vary: bool = False):
    """(needed tool names, user question, [(calls, tool messages)] per assistant step, final answer).
    vary=True draws unit values and amounts from wider lists (sft_tool): a model that sees the same few numbers
    memorises them instead of learning to copy the user's number into the arguments. agent_rl keeps vary=False,
    so its file (and the rollout benchmarks measured on it) stays the same."""
    if kind == 0:  # arithmetic
        a, b, c = rng.randint(12, 999), rng.randint(12, 99), rng.randint(2, 60)
        expr = rng.choice([f"{a}*{b}", f"{a}*{b}+{c}", f"({a}+{b})*{c}", f"{a*c}/{c}", f"{a}-{b}*{c}", f"{a}**2"])
        q = rng.choice([f"帮我算一下 {expr}", f"{expr} 等于多少？", f"请计算：{expr}"]) if zh else \
            rng.choice([f"What is {expr}?", f"Calculate {expr}.", f"Please compute {expr} for me."])
        call, tool, r = _call("calculate_math", {"expression": expr})
        return ["calculate_math"], q, [([call], [tool])], f"{expr} = {r['result']}" + ("。" if zh else ".")
    if kind == 1:  # unit conversion
        v, fu, tu, zf, zt, ef, et = rng.choice(UNIT_CASES)
        if vary and rng.random() < 0.7:
            v = rng.choice(UNIT_VALUES)
        q = f"{_num(v)}{zf}等于多少{zt}？" if zh else f"How many {et} is {_num(v)} {ef}?"
        call, tool, r = _call("unit_converter", {"value": v, "from_unit": fu, "to_unit": tu})
        ans = f"{_num(v)}{zf}约等于{_num(r['result'])}{zt}。" if zh else f"{_num(v)} {ef} is about {_num(r['result'])} {et}."
        return ["unit_converter"], q, [([call], [tool])], ans
    if kind == 2:  # time zones
        zc, tz, ec = rng.choice(TIME_CITIES)
        q = rng.choice([f"{zc}现在几点了？", f"查一下{zc}的当前时间"]) if zh else f"What time is it in {ec} now?"
        call, tool, r = _call("get_current_time", {"timezone": tz})
        ans = f"{zc}现在是{r['datetime']}。" if zh else f"It is {r['datetime']} ({r['weekday']}) in {ec}."
        return ["get_current_time"], q, [([call], [tool])], ans
    if kind == 3:  # exchange rate with an amount
        (zc, code), amount = rng.choice(CURRENCIES), rng.choice(FX_AMOUNTS if vary else [50, 100, 200, 500, 1000])
        q = f"{amount}{zc}能换多少人民币？" if zh else f"How much is {amount} {code} in Chinese yuan?"
        call, tool, r = _call("get_exchange_rate", {"from_currency": code, "to_currency": "CNY", "amount": amount})
        ans = (f"按汇率{_num(r['rate'])}计算，{amount}{zc}约合{_num(r['converted'])}元人民币。" if zh else
               f"At a rate of {_num(r['rate'])}, {amount} {code} is about {_num(r['converted'])} CNY.")
        return ["get_exchange_rate"], q, [([call], [tool])], ans
    if kind == 4:  # weather
        zc, ec = rng.choice(WEATHER_CITIES)
        q = rng.choice([f"{zc}今天天气怎么样？", f"查一下{zc}的天气"]) if zh else f"What's the weather like in {ec}?"
        call, tool, r = _call("get_current_weather", {"location": zc if zh else ec})
        ans = (f"{zc}现在{r['condition']}，气温{r['temperature']}，湿度{r['humidity']}。" if zh else
               f"It is {r['condition']} in {ec}: {r['temperature']}, humidity {r['humidity']}.")
        return ["get_current_weather"], q, [([call], [tool])], ans
    if kind == 5:  # two calls at once (parallel)
        z1, z2 = [zc if zh else ec for zc, ec in rng.sample(WEATHER_CITIES, 2)]
        c1, t1, r1 = _call("get_current_weather", {"location": z1})
        c2, t2, r2 = _call("get_current_weather", {"location": z2})
        hot = z1 if int(r1["temperature"][:-2]) >= int(r2["temperature"][:-2]) else z2
        q = f"{z1}和{z2}现在哪里更热？" if zh else f"Which is warmer right now, {z1} or {z2}?"
        ans = (f"{z1}{r1['temperature']}，{z2}{r2['temperature']}，{hot}更热。" if zh else
               f"{z1} is {r1['temperature']} and {z2} is {r2['temperature']}, so {hot} is warmer.")
        return ["get_current_weather"], q, [([c1, c2], [t1, t2])], ans
    if kind == 6:  # two steps: the second call uses the first result
        (zc, code), amount, people = rng.choice(CURRENCIES[:3]), rng.choice([100, 240, 360, 500]), rng.choice([2, 3, 4, 5])
        c1, t1, r1 = _call("get_exchange_rate", {"from_currency": code, "to_currency": "CNY", "amount": amount})
        expr = f"{_num(r1['converted'])}/{people}"
        c2, t2, r2 = _call("calculate_math", {"expression": expr})
        q = (f"我有{amount}{zc}，换成人民币后平分给{people}个人，每人能分到多少元？" if zh else
             f"I have {amount} {code}. If I change it to yuan and split it among {people} people, how much does each get?")
        ans = (f"{amount}{zc}约合{_num(r1['converted'])}元，平分给{people}人，每人约{r2['result']}元。" if zh else
               f"{amount} {code} is about {_num(r1['converted'])} CNY; split {people} ways, each person gets about "
               f"{r2['result']} CNY.")
        return ["get_exchange_rate", "calculate_math"], q, [([c1], [t1]), ([c2], [t2])], ans
    text, lang = rng.choice(PHRASES_TO_TRANSLATE)  # kind 7: translation (8: no tool, in make_sft_tool)
    q = f"把“{text}”翻译成{'英文' if lang == 'english' else '中文'}" if zh else \
        f"Translate \"{text}\" into {'English' if lang == 'english' else 'Chinese'}."
    call, tool, r = _call("translate_text", {"text": text, "target_language": lang})
    ans = f"“{text}”的翻译是：{r['translated_text']}" if zh else f"\"{text}\" translates as: {r['translated_text']}"
    return ["translate_text"], q, [([call], [tool])], ans


def _offered_tools(rng: random.Random, needed: list[str], n_others: int | None = None) -> list[dict]:
    """The needed tools plus `n_others` others (default: one or two), in random order: the model must pick the
    right one."""
    others = [t["function"]["name"] for t in tool_schemas() if t["function"]["name"] not in needed]
    names = needed + rng.sample(others, rng.randint(1, 2) if n_others is None else n_others)
    rng.shuffle(names)
    return tool_schemas(names)


N_SFT_TOOL = 180


def _held_out_questions() -> set[str]:
    """The questions of the tool-call eval (toolcall_eval.jsonl, written by hand): never training prompts."""
    path = HERE / "toolcall_eval.jsonl"
    if not path.is_file():
        return set()
    return {json.loads(line)["question"].strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()}


def make_sft_tool(rng: random.Random) -> list[dict]:
    """Tool-call conversations. Each offers the tool(s) it needs plus ONE other (two-step and no-tool ones: two
    tools), as the eval does: every offered schema costs ~200 tokens of context, which a CPU quick start pays on
    every step, while the learned tokens (the calls and the answer) are only ~80 per conversation. So many short
    conversations, not a few long ones."""
    held_out = _held_out_questions()
    out = []
    i = -1
    while len(out) < N_SFT_TOOL:
        i += 1
        zh = rng.random() < 0.6
        # Every 4th record spells tools / tool_calls as JSON strings, as upstream's sft_t2t files do.
        as_strings = len(out) % 4 == 3
        if i % 9 == 8:  # tools offered but not needed: answer directly
            q, a = rng.choice(NO_TOOL_QA)
            tools = _offered_tools(rng, [], 2)
            turns = [msg("user", q), msg("assistant", a)]
        else:
            needed, q, steps, answer = tool_episode(rng, i % 9, zh, vary=True)
            tools = _offered_tools(rng, needed, 1 if len(needed) == 1 else 0)
            turns = [msg("user", q)]
            for calls, results in steps:
                if as_strings:
                    calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]
                turns.append({"role": "assistant", "content": "",
                              "tool_calls": json.dumps(calls, ensure_ascii=False) if as_strings else calls})
                turns += results
            turns.append(msg("assistant", answer))
        system = {"role": "system", "content": rng.choice(TOOL_SYSTEMS),
                  "tools": json.dumps(tools, ensure_ascii=False) if as_strings else tools}
        if q.strip() in held_out:
            continue
        out.append({"conversations": [system] + turns})
    return out


def make_agent_rl(rng: random.Random) -> list[dict]:
    """Upstream's agent_rl.jsonl layout: system with tools (a JSON string), user, an empty assistant placeholder,
    and `gt`, the answer(s) a correct episode must state (computed here with the same tools)."""
    out = []
    for i in range(40):
        zh = rng.random() < 0.6
        kind = [0, 1, 3, 6][i % 4]  # the kinds with a number to check
        needed, q, steps, _ = tool_episode(rng, kind, zh)
        last = json.loads(steps[-1][1][-1]["content"])
        gt = last.get("result", last.get("converted"))
        tools = json.dumps(_offered_tools(rng, needed), ensure_ascii=False)
        out.append({"conversations": [{"role": "system", "content": "", "tools": tools}, msg("user", q),
                                      msg("assistant", "")], "gt": [_num(gt) if not isinstance(gt, str) else gt]})
    return out


# ---------------------------------------------------------------------------
# Writing, README, validation
# ---------------------------------------------------------------------------

FILES = ["pretrain", "sft", "dpo", "rlaif", "reason", "lora_identity", "gsm8k", "eval_mc", "sft_tool", "agent_rl"]

DESCR = {
    "pretrain": ('`{"text": "..."}`, 40-400 characters', "plain zh/en text: short general-knowledge paragraphs, Q/A-style text, MiniMind identity text, multiplication tables, word lists"),
    "sft": ('`{"conversations": [{"role", "content"}, ...]}`; optional leading `system`, then strictly alternating `user`/`assistant`, ends with `assistant`',
            "greetings and identity questions (MiniMind), single-turn Q/A on the same facts as pretrain, ~15% multi-turn, ~10% with a system message"),
    "dpo": ('`{"chosen": [turns...], "rejected": [turns...]}`; identical prompt turns, only the final assistant turn differs',
            "chosen = correct and polite answer; rejected = wrong, rude or unhelpful answer"),
    "rlaif": ('`{"conversations": [user, {"role": "assistant", "content": "无"}]}`', "prompts for RL from AI feedback (PPO/GRPO); the assistant content is the placeholder \"无\" as in upstream rlaif-mini.jsonl"),
    "reason": ('SFT format; assistant content is `"<think>\\n{reasoning}\\n</think>\\n<answer>\\n{final answer}\\n</answer>"`',
               "arithmetic word problems (numbers generated, answers computed in code) and simple logic questions, zh + en"),
    "lora_identity": ("SFT format", "identity for LoRA fine-tuning: \"MiniMind, created by the MiniMind community\", many phrasings, zh + en"),
    "gsm8k": ('`{"question": "...", "answer": "...worked solution...\\n#### N"}`; final number matches `####\\s*(-?[\\d,.]+)`',
              "our own simple multi-step arithmetic word problems, GSM8K-style `<<a*b=c>>` annotations, answers computed in code"),
    "eval_mc": ('`{"question": "...", "choices": [4 strings], "answer": "A".."D"}`', "multiple-choice questions on the same facts (generic MMLU-style format)"),
    "sft_tool": ('SFT format with upstream minimind-3\'s tool fields: system `{"role": "system", "content", "tools": [schemas]}`, user, then assistant `{"content": "", "tool_calls": [...]}` + `tool` results (repeated for two-step tasks), final assistant answer; every 4th record stores `tools` / `tool_calls` as JSON strings, as upstream\'s files do',
                 "tool-call conversations with the tools of `model/tools.py` (calculator, unit conversion, time zones, exchange rates, weather, translation; parallel and two-step calls; some where no tool is needed); every tool result is the tool's real output"),
    "agent_rl": ('upstream agent_rl.jsonl layout: `{"conversations": [system, user, {"role": "assistant", "content": ""}], "gt": ["answer"]}`, the system message carrying `tools` as a JSON string',
                 "agentic-RL episodes (AgentRLDataset): arithmetic, unit conversion, exchange rates and two-step questions; `gt` computed with the same tools"),
}


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def record_text(name: str, r: dict) -> str:
    if name == "pretrain":
        return r["text"]
    if name in ("gsm8k",):
        return r["question"]
    if name == "eval_mc":
        return r["question"]
    if name == "dpo":
        return " ".join(t["content"] for t in r["chosen"] if t["role"] == "user")
    return " ".join(t["content"] for t in r["conversations"] if t["role"] == "user")


def write_readme(out: Path) -> None:
    rows = []
    total = 0
    for name in FILES:
        p = out / f"{name}.jsonl"
        recs = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
        size = p.stat().st_size
        total += size
        zh = sum(has_cjk(record_text(name, r)) for r in recs)
        fmt, what = DESCR[name]
        rows.append(f"| `{name}.jsonl` | {len(recs)} | {size / 1024:.1f} kB | {100 * zh // len(recs)}% | {fmt} | {what} |")
    text = f"""# MiniMind sample data (quick start and smoke tests only)

This folder holds a tiny, bundled data set for the README quick start (tokenizer -> pretrain -> SFT -> chat in a few
minutes on a CPU) and for the smoke tests of the later training stages (DPO, RLAIF, reasoning, LoRA, tool use,
evaluation).

**It is written and generated by us.** All facts, questions, answers and templates are hand-written in
`make_sample_data.py`, which combines them deterministically (fixed seed {SEED}) into the files below. No external data
set was copied. Re-running

```bash
python dataset/sample/make_sample_data.py          # regenerate (byte-identical) and validate
python dataset/sample/make_sample_data.py --check  # validate only
```

rewrites the same bytes, regenerates this README and validates every file.

**It is not real training data.** A model trained on it will only parrot these few hundred facts and the MiniMind
greeting/identity answers (e.g. for "你好" / "Who are you?"). Real training needs the full MiniMind data sets
(pretrain_hq, sft_mini_512 / sft_*, dpo, rlaif-mini, r1_mix, lora_identity, ...; for minimind-3: pretrain_t2t_mini,
sft_t2t_mini, rlaif, agent_rl, ...: see `scripts/download_data.py --list`).

Content: short, friendly general knowledge (science, space, geography, history, Chinese culture, math, programming,
health, daily life, animals, language), about 60% Chinese and 40% English, plus identity text about the assistant
MiniMind (a small open-source language model that can be trained from scratch on one GPU in about two hours).

All files are UTF-8 JSON lines (`ensure_ascii=False`), one object per `\\n`-terminated line.

| file | records | size | zh share | format | contents |
|---|---:|---:|---:|---|---|
{chr(10).join(rows)}

Total size of the `.jsonl` files: {total / 1024:.1f} kB. ("zh share" = records whose text / user turns contain Chinese characters.)

Validation (`--check`) verifies: every line parses; exact keys per format; pretrain texts are 40-400 characters; SFT-style
conversations have an optional leading system turn, then alternate user/assistant and end with assistant; rlaif records
are exactly `[user, assistant "无"]`; reason answers match the `<think>`/`<answer>` template; DPO pairs share all prompt
turns and differ in the final assistant turn; gsm8k answers match `####\\s*(-?[\\d,.]+)`, every `<<expr=value>>`
annotation evaluates correctly and the final number equals the last computed value; eval_mc has 4 distinct choices and
an answer letter A-D; sft_tool conversations follow system(tools), user, (assistant tool_calls, tool results)*, answer,
call only offered tools, and every tool result equals what `model/tools.py` returns today; agent_rl records are
`[system(tools), user, assistant ""]` with a non-empty `gt` list.
"""
    with open(out / "README.md", "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def generate(out: Path) -> dict[str, list[dict]]:
    makers = {
        "pretrain": make_pretrain, "sft": make_sft, "dpo": make_dpo, "rlaif": make_rlaif,
        "reason": make_reason, "lora_identity": make_lora_identity, "gsm8k": make_gsm8k, "eval_mc": make_eval_mc,
    }
    makers.update(sft_tool=make_sft_tool, agent_rl=make_agent_rl)
    data = {}
    for i, name in enumerate(FILES):
        rng = random.Random(SEED + i)  # independent stream per file
        data[name] = makers[name](rng)
        write_jsonl(out / f"{name}.jsonl", data[name])
    write_readme(out)
    return data


# ----------------------------- validation -----------------------------------

REASON_RE = re.compile(r"\A<think>\n(.+)\n</think>\n<answer>\n(.+)\n</answer>\Z", re.S)
GSM_RE = re.compile(r"####\s*(-?[\d,.]+)")
CALC_RE = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
MIN_COUNTS = {"pretrain": 600, "sft": 400, "dpo": 80, "rlaif": 80, "reason": 80, "lora_identity": 60, "gsm8k": 60, "eval_mc": 40,
              "sft_tool": 50, "agent_rl": 30}


def _as_list(value):
    return json.loads(value) if isinstance(value, str) else value


def _check_tool_record(r: dict, where: str) -> None:
    """sft_tool: system with tools, user, (assistant tool_calls, tool results)*, assistant answer; each call names
    an offered tool and each result equals what model/tools.py returns for that call."""
    assert set(r) == {"conversations"}, where
    c = r["conversations"]
    assert set(c[0]) == {"role", "content", "tools"} and c[0]["role"] == "system", f"{where}: system turn"
    offered = {t["function"]["name"] for t in _as_list(c[0]["tools"])}
    assert c[1]["role"] == "user" and c[1]["content"].strip(), f"{where}: user turn"
    assert c[-1]["role"] == "assistant" and set(c[-1]) == {"role", "content"} and c[-1]["content"].strip(), where
    k = 2
    while k < len(c) - 1:
        turn = c[k]
        assert turn["role"] == "assistant" and turn["content"] == "" and set(turn) == {"role", "content", "tool_calls"}, where
        calls = _as_list(turn["tool_calls"])
        results = c[k + 1:k + 1 + len(calls)]
        assert len(results) == len(calls) and all(t["role"] == "tool" for t in results), f"{where}: results"
        for call, res in zip(calls, results):
            fn = call.get("function", call)
            assert fn["name"] in offered, f"{where}: {fn['name']} not offered"
            assert res["content"] == call_tool(fn["name"], fn["arguments"]), f"{where}: stale tool result"
        k += 1 + len(calls)


def _check_turns(turns, where: str, allow_system: bool = True) -> None:
    assert isinstance(turns, list) and turns, f"{where}: empty conversation"
    for t in turns:
        assert isinstance(t, dict) and set(t) == {"role", "content"}, f"{where}: bad turn keys {t}"
        assert isinstance(t["content"], str) and t["content"].strip(), f"{where}: empty content"
    roles = [t["role"] for t in turns]
    if roles[0] == "system":
        assert allow_system, f"{where}: system turn not allowed"
        roles = roles[1:]
    assert roles and len(roles) % 2 == 0, f"{where}: odd number of user/assistant turns"
    for k, r in enumerate(roles):
        assert r == ("user" if k % 2 == 0 else "assistant"), f"{where}: roles do not alternate: {roles}"


def validate(out: Path) -> dict[str, int]:
    counts = {}
    total = 0
    for name in FILES:
        p = out / f"{name}.jsonl"
        raw = p.read_bytes()
        total += len(raw)
        assert raw.endswith(b"\n") and b"\r" not in raw, f"{name}: line endings"
        lines = raw.decode("utf-8").split("\n")[:-1]
        recs = []
        for ln, line in enumerate(lines, 1):
            where = f"{name}.jsonl:{ln}"
            r = json.loads(line)
            assert json.dumps(r, ensure_ascii=False) == line, f"{where}: not canonical ensure_ascii=False JSON"
            recs.append(r)
            if name == "pretrain":
                assert set(r) == {"text"} and isinstance(r["text"], str), where
                assert 40 <= len(r["text"]) <= 400, f"{where}: length {len(r['text'])}"
            elif name in ("sft", "reason", "lora_identity", "rlaif"):
                assert set(r) == {"conversations"}, where
                _check_turns(r["conversations"], where)
                if name == "rlaif":
                    c = r["conversations"]
                    assert [t["role"] for t in c] == ["user", "assistant"] and c[1]["content"] == "无", where
                if name == "reason":
                    for t in r["conversations"]:
                        if t["role"] == "assistant":
                            assert REASON_RE.match(t["content"]), f"{where}: reason template"
            elif name == "dpo":
                assert set(r) == {"chosen", "rejected"}, where
                _check_turns(r["chosen"], where)
                _check_turns(r["rejected"], where)
                assert r["chosen"][:-1] == r["rejected"][:-1], f"{where}: prompt turns differ"
                assert r["chosen"][-1]["role"] == r["rejected"][-1]["role"] == "assistant", where
                assert r["chosen"][-1]["content"] != r["rejected"][-1]["content"], f"{where}: identical answers"
            elif name == "gsm8k":
                assert set(r) == {"question", "answer"} and all(isinstance(v, str) for v in r.values()), where
                m = GSM_RE.findall(r["answer"])
                assert len(m) == 1 and r["answer"].rstrip().endswith(m[0]), f"{where}: #### answer"
                final = float(m[0].replace(",", ""))
                last = None
                for expr, val in CALC_RE.findall(r["answer"]):
                    assert re.fullmatch(r"[\d+\-*/(). ]+", expr), f"{where}: bad expression {expr}"
                    got = eval(expr, {"__builtins__": {}})
                    assert abs(got - float(val)) < 1e-9, f"{where}: {expr} != {val}"
                    last = got
                assert last is not None and abs(last - final) < 1e-9, f"{where}: final answer {final} != {last}"
            elif name == "sft_tool":
                _check_tool_record(r, where)
            elif name == "agent_rl":
                assert set(r) == {"conversations", "gt"}, where
                c = r["conversations"]
                assert [t["role"] for t in c] == ["system", "user", "assistant"] and c[2]["content"] == "", where
                assert isinstance(c[0]["tools"], str) and _as_list(c[0]["tools"]), f"{where}: tools"
                assert isinstance(r["gt"], list) and r["gt"] and all(isinstance(g, str) and g for g in r["gt"]), where
            elif name == "eval_mc":
                assert set(r) == {"question", "choices", "answer"}, where
                ch = r["choices"]
                assert isinstance(ch, list) and len(ch) == 4 and len(set(ch)) == 4, f"{where}: choices"
                assert all(isinstance(c, str) and c for c in ch), where
                assert r["answer"] in ("A", "B", "C", "D"), where
        assert len(recs) >= MIN_COUNTS[name], f"{name}: only {len(recs)} records"
        counts[name] = len(recs)
    assert total < 1_500_000, f"sample data too large: {total} bytes"
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE, help="output directory (default: this folder)")
    ap.add_argument("--check", action="store_true", help="only validate the existing files")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.check:
        generate(args.out)
    counts = validate(args.out)
    for name in FILES:
        size = (args.out / f"{name}.jsonl").stat().st_size
        print(f"{name + '.jsonl':22s} {counts[name]:5d} records {size / 1024:8.1f} kB")
    print("OK: all files valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
