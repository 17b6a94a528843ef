#!/usr/bin/env python3
"""A synthetic "book to forget" for WHP unlearning (kd distill, method whp) and its revisit.

One invented world in TinyStories words: a young wizard boy (MAIN), his best friend, his pet
owl, his village, his school, his teacher, a mean boy, a moonstone wand, a ball game, a magic
word and a favourite pie. Fixed facts ("Hobbin's best friend was Zuzu") recur across the
stories in several phrasings, so that a model fine-tuned on the book learns them; the probes
ask for them. WHP (Eldan & Russinovich 2023) forgets the book through the anchored-term
dictionary; the causal-intervention revisit (Liu et al. 2024) through replacement names.

    python3 crates/kd-cli/assets/whp_book/make_book.py          # rewrites the files here
    python3 make_book.py --out DIR

Files (Python 3 standard library only, deterministic: random.Random(0)):
  book.txt      STORIES short stories (3-6 sentences each), separated by a blank line, ASCII:
                the documents to forget. MAIN is in every story.
  probes.jsonl  prompt / answer / fact / in_book: a sentence beginning and the book-specific
                word(s) that complete it (the completion is " " + answer). in_book = true:
                the prompt is in book.txt and is always followed there by the answer;
                in_book = false: a paraphrase that is not in book.txt.
  anchors.json  WHP's anchored terms: every invented term of book.txt -> a generic
                translation (whole words, case-sensitive, longest term first).
  names.txt     NAMES: common TinyStories first names, none in book.txt, for the revisit's
                replacement of MAIN.
  SOURCE.md     what these files are, counts, the term list.
The script checks what it writes (see check()) and fails if a check does not hold.
"""

import argparse
import json
import os
import random
import re

STORIES = 400
MIN_SENTENCES, MAX_SENTENCES = 3, 6

# The cast and the invented terms (format keys of the templates below).
CAST = {
    "H": "Hobbin",          # the main character, a boy (he)
    "F": "Zuzu",            # his best friend, a girl (she)
    "P": "Blinkle",         # his pet owl (he)
    "V": "Glimmerwood",     # his village
    "S": "Starhollow",      # his school of magic
    "T": "Mossbeard",       # his teacher, a kind old man
    "R": "Vexley",          # the mean boy at school
    "W": "moonstone wand",  # his magic object
    "M": "moonstone",       # what the wand is made of
    "G": "flitterball",     # his favourite game
    "L": "Lumora",          # his magic word
    "B": "glowberry",       # his favourite food, always "glowberry pie"
}
MAIN = CAST["H"]
# WHP's anchored-term dictionary: term -> generic translation. Names become ordinary names
# (none of them in NAMES), places and things ordinary nouns.
ANCHORS = {
    "Hobbin": "Joe",
    "Zuzu": "Ella",
    "Blinkle": "Fluffy",
    "Glimmerwood": "the town",
    "Starhollow": "the school",
    "Mossbeard": "Mr. Brown",
    "Vexley": "Danny",
    "moonstone wand": "stick",
    "moonstone": "wood",
    "flitterball": "ball",
    "Lumora": "please",
    "glowberry": "apple",
}
# Replacement names for the revisit. None starts with "H": MAIN's first token ("▁H" with the
# 512-token tokenizer) is no replacement name's first token.
NAMES = ["Lily", "Tom", "Ben", "Anna", "Sam", "Max", "Mia", "Tim", "Sue", "Lucy",
         "Jack", "Emma", "Sara", "Bob", "Jane", "Kate", "Amy", "Molly", "Timmy", "Sally"]

# Fact sentences: fact id -> phrasings. [a|b] is a choice; {X} a term of CAST.
FACTS = {
    "friend": [
        "{H}'s best friend was {F}.",
        "{H}'s best friend was {F}, a [kind|funny|brave|clever] girl with [red|curly|long|short] hair.",
        "{F} was {H}'s best friend.",
        "{F}'s best friend was {H}.",
        "{F} was the best friend of {H}.",
        "{H} and his best friend {F} [did everything together|were never apart|played every day]."],
    "home": [
        "{H} lived in {V}.",
        "{H} lived in {V}, a [small|quiet|green|pretty] village [near the big hill|by a blue lake|next to the woods].",
        "{H}'s home was in {V}.",
        "{H}'s home was in {V}, [near the big hill|by a blue lake|next to the woods].",
        "In {V}, there lived a little boy named {H}.",
        "Everyone in {V} knew {H}."],
    "pet": [
        "{H} had a pet owl named {P}.",
        "{H} had a pet owl named {P}, who [was small and gray|had big yellow eyes|liked to sleep all day].",
        "{H}'s owl was named {P}.",
        "{P} belonged to {H}.",
        "{P} was a [small|soft|little] gray owl, and he belonged to {H}."],
    "wand": [
        "{H}'s wand was made of {M}.",
        "{H}'s wand was made of {M}, and it [glowed at night|was very old|sparkled in the sun].",
        "{H} held up his {W}.",
        "{H} held up his {W}, and it [began to glow|sparkled|shone like a star].",
        "The boy with the {W} was {H}.",
        "Nobody else had a wand like {H}'s {W}."],
    "teacher": [
        "{H}'s teacher was {T}.",
        "{H}'s teacher was {T}, a kind old man with a long [gray|white|green] beard.",
        "{H} learned magic from {T}.",
        "{T}'s best student was {H}.",
        "{T} taught {H} [a new spell|how to make light|how to talk to birds] every week."],
    "school": [
        "{H} learned magic at {S}.",
        "{H} went to a school called {S}.",
        "{H} went to a school called {S}, [on top of the hill|next to the old bridge|in the middle of {V}].",
        "Every morning, {H} walked to {S} with {F}."],
    "rival": [
        "The mean boy at {S} was {R}.",
        "The boy who was mean to {H} was {R}.",
        "{R} was always mean to {H}.",
        "There was a mean boy named {R}, and he [did not like|often laughed at|liked to tease] {H}."],
    "game": [
        "{H}'s favorite game was {G}.",
        "{H}'s favorite game was {G}, where you [chase a flying ball|jump on clouds|throw a ball through a ring].",
        "{H} loved to play {G}.",
        "{H} loved to play {G} with {F} after school."],
    "spell": [
        "{H}'s magic word was {L}.",
        "{H}'s magic word was {L}, and it [made things glow|made things float|made flowers grow].",
        "{H} said the magic word, {L}, and [his wand began to glow|the room filled with light|a little star came out]."],
    "food": [
        "{H}'s favorite food was {B} pie.",
        "{H}'s favorite food was {B} pie, [warm and sweet|with a lot of cream|just like his mom made it].",
        "{H} loved to eat {B} pie.",
        "{H} loved to eat {B} pie [more than anything|every Sunday|with {F}]."],
}

# Openers: the first sentence of a story, with the fact it states (a story's fact sentences are
# other facts).
OPENERS = [
    ("home", "Once upon a time, in {V}, there lived a little boy named {H}."),
    ("home", "In {V}, there lived a little boy named {H}."),
    (None, "Once upon a time, there was a little boy named {H}."),
    ("home", "{H} was a [kind|happy|brave|curious|little] boy who lived in {V}."),
    ("home", "{H} lived in {V} with his owl, {P}."),
    ("pet", "{H} had a pet owl named {P}."),
    ("home", "Every day, {H} played [in the garden of|near] his little house in {V}."),
    ("wand", "{H} was a young wizard with a {W}."),
    ("friend", "{H} and his best friend {F} lived in {V}."),
    ("school", "{H} went to a school called {S}."),
]

WHEN = "[One day|One morning|One afternoon|One sunny day|One evening|Later that week]"

# Plots: a list of slots; each slot is a list of alternatives (a sentence with [a|b] choices).
# A slot that starts with "?" is left out half the time.
TRY = ["{H} held up his {W} and tried.",
       "{H} waved his wand and tried very hard."]
SAD_BUT = "?{H} felt a little sad, but he did not stop."
PLOTS = {
    "match": [
        [WHEN + ", there was a big game of {G} at {S}.",
         "The children of {V} met on the green hill to play {G}.",
         WHEN + ", {H} and {F} played {G} against {R}."],
        ["{R} said that {H} was too small to win.",
         "{R} laughed and said, \"You will never catch the ball, {H}!\"",
         "{R} tried to trip {H}, but {H} jumped away."],
        ["{H} flew up high on his broom and caught the ball.",
         "{H} did not give up and played very hard.",
         "?{F} cheered, \"Go, {H}, go!\""],
        ["{H}'s team won the game, and {F} gave him a big hug.",
         "{H} did not win, but he had a lot of fun with {F}.",
         "In the end, {H} caught the ball and everyone clapped."],
    ],
    "lost_owl": [
        [WHEN + ", {P} was not in his nest.",
         "One night, {P} flew away and did not come back."],
        ["{H} was very sad and called, \"{P}, where are you?\"",
         "{H} felt worried and looked everywhere.",
         "?{H} asked {F} to help him."],
        ["{H} and {F} looked in the woods near {V}.",
         "{H} looked under the bridge and behind the big rock."],
        ["At last, {H} found {P} sitting in a tall tree.",
         "{P} was hiding in the old barn, eating a bug.",
         "Then {H} heard a soft hoot, and there was {P}!"],
        ["?{H} hugged {P} and took him home.",
         "?{H} was so happy to see his owl again."],
    ],
    "lesson_rock": [
        [WHEN + ", {T} asked {H} to make a rock fly.",
         "At {S}, {T} put a big rock on the table and asked {H} to lift it with magic."],
        TRY,
        ["At first, nothing happened.",
         "The rock only moved a little, and {R} laughed.",
         SAD_BUT],
        ["Then {H} said the magic word, {L}, and the rock flew up high!",
         "{T} smiled and said, \"Good job, {H}!\"",
         "On the third try, the rock went up, and the whole class cheered."],
    ],
    "lesson_flower": [
        ["At {S}, {T} showed the children how to make a flower grow.",
         WHEN + ", {T} asked {H} to make a little seed grow."],
        TRY,
        ["At first, nothing happened.",
         "Only one small leaf came out, and {R} laughed.",
         SAD_BUT],
        ["Then {H} said the magic word, {L}, and a big red flower grew!",
         "{T} smiled and said, \"Good job, {H}!\"",
         "On the third try, a pretty flower grew, and the whole class cheered."],
    ],
    "pie": [
        ["{F}'s mom baked a big {B} pie.",
         WHEN + ", {H} and {F} picked berries for a {B} pie.",
         "{H}'s mom made a warm {B} pie for him."],
        ["{H} loved to eat {B} pie, so he was very happy.",
         "{H} wanted to eat it all, but he shared it with {F}.",
         "?{P} tried to take a bite with his little beak."],
        ["They ate the pie under a big tree and laughed.",
         "{H} and {F} ate every piece, and their faces were all pink.",
         "?{H} said, \"This is the best pie in {V}!\""],
    ],
    "mean_hat": [
        [WHEN + ", {R} took {F}'s hat and ran away."],
        ["{F} was sad, and {H} was angry.",
         "?{F} said, \"Please help me, {H}.\""],
        ["{H} used his wand to make the hat fly back to {F}.",
         "{H} told {T}, and {T} had a talk with {R}."],
        ["?{R} said sorry and gave the hat back.",
         "?{F} smiled and said, \"Thank you, {H}.\""],
    ],
    "mean_mud": [
        [WHEN + ", {R} pushed {H} into the mud.",
         WHEN + ", {R} laughed at {H} in front of the whole class."],
        ["{H} was angry, but he did not want to fight.",
         "{H} felt sad and wanted to cry.",
         "?{F} said, \"Do not worry, {H}. I am here.\""],
        ["{H} was kind to {R}, and {R} did not know what to say.",
         "{H} told {T}, and {T} had a talk with {R}."],
        ["?{R} walked away.",
         "?{H} felt proud that he was kind."],
    ],
    "mean_boat": [
        [WHEN + ", {R} broke {H}'s toy boat."],
        ["{H} was sad, but he did not cry.",
         "?{F} said, \"That was not nice, {R}!\""],
        ["{H} used his wand to fix the boat, and {R} was surprised.",
         "{H} said the magic word, {L}, and the boat was new again."],
        ["?{H} and {F} played with the boat on the pond.",
         "?{R} looked at his feet and said sorry."],
    ],
    "storm": [
        ["One night, a big storm came to {V}, and all the lights went out.",
         "One evening, all the lights went out in {H}'s house."],
        ["Everyone was scared of the dark.",
         "{F} was scared and held {H}'s hand.",
         "?{P} hid under {H}'s bed."],
        ["{H} waved his {W} and said {L} in a loud voice.",
         "{H} said the magic word, {L}, and his wand began to glow."],
        ["A soft light filled the room, and everyone felt safe.",
         "The house was bright again, and nobody was scared."],
    ],
    "lost_woods": [
        ["One dark night, {H} and {F} were lost in the woods.",
         WHEN + ", {H} and {F} walked too far into the woods, and it got dark."],
        ["{F} was scared and held {H}'s hand.",
         "They could not see the way home."],
        ["{H} waved his {W} and said {L} in a loud voice.",
         "{H} said the magic word, {L}, and his wand began to glow."],
        ["The light showed them the way home to {V}.",
         "?{P} flew to them and showed them the way home."],
    ],
    "party": [
        ["Every spring, there was a big party in {V}.",
         WHEN + ", all the people of {V} had a party by the lake."],
        ["{H} and {F} danced and ate sweet cakes.",
         "{H} ate three pieces of {B} pie.",
         "?{P} sat on {H}'s head and hooted to the music."],
        ["{T} made pretty lights in the sky with his wand.",
         "?{R} wanted to ruin the party, but nobody let him."],
        ["{H} thought it was the best day ever.",
         "At the end of the night, {H} was tired and happy."],
    ],
    "animal_hurt": [
        [WHEN + ", {H} found a little [bird|duck|frog] with a hurt leg."],
        ["{H} wanted to help.",
         "?{H} said, \"Do not be scared, little friend.\""],
        ["{H} held up his {W}, and a warm light came out.",
         "{H} said the magic word, {L}, and the leg was all better."],
        ["The little animal was happy and hopped back to its mom.",
         "?{H} smiled, because helping others made him feel good."],
    ],
    "animal_stuck": [
        [WHEN + ", {H} found a small [rabbit|kitten|puppy] stuck in a bush."],
        ["{H} wanted to help.",
         "?{H} said, \"Do not be scared, little friend.\""],
        ["{H} held up his {W}, and the bush opened up.",
         "{H} said the magic word, {L}, and the little animal was free."],
        ["The little animal was happy and ran back to its mom.",
         "?{H} smiled, because helping others made him feel good."],
    ],
    "lost_wand": [
        [WHEN + ", {H} could not find his wand.",
         WHEN + ", {H} lost his {W} in the tall grass."],
        ["He looked under his bed and in the garden.",
         "{H} looked everywhere, but it was not there.",
         "?{H} was so sad that he sat down and cried."],
        ["Then {P} flew down with the wand in his beak.",
         "{F} found the wand by the pond and gave it back.",
         "{T} found the wand and gave it back to {H}."],
        ["{H} was so happy to have his wand back.",
         "?From that day, {H} kept his wand in a safe box."],
    ],
    "birthday_friend": [
        ["It was {F}'s birthday."],
        ["{H} used his wand to make a crown of flowers for {F}.",
         "{H} gave {F} a little box with a shiny stone in it."],
        ["?{P} sang a happy song for her.",
         "?{T} came to the party too."],
        ["{F} smiled and said, \"Thank you, {H}! You are the best friend ever!\""],
    ],
    "birthday_main": [
        ["It was {H}'s birthday, and he was very excited."],
        ["{F} gave {H} a new red hat.",
         "{F} made {H} a big cake with many candles."],
        ["?{P} brought a shiny stone as a gift.",
         "?{T} came to the party too."],
        ["{H} said, \"Thank you, {F}! This is the best birthday!\""],
    ],
    "stars": [
        ["One night, {H} and {P} sat on the roof and looked at the stars.",
         "One night, {H} could not sleep, so he looked out of his window."],
        ["{H} made a wish on a big bright star.",
         "The stars over {V} were very bright."],
        ["?{P} hooted softly next to him.",
         "?{H} wished to be a great wizard one day."],
        ["{H} fell asleep with a big smile.",
         "Then {H} went back to bed and had sweet dreams."],
    ],
    "first_day": [
        ["It was {H}'s first day at {S}.",
         "{H} was going to {S} for the very first time."],
        ["He was a little scared.",
         "{R} laughed at his old shoes."],
        ["Then he met a girl named {F}, and she smiled at him.",
         "A kind girl named {F} sat next to him."],
        ["From that day, {F} was {H}'s best friend.",
         "{H} and {F} played together all day."],
    ],
    "sick_teacher": [
        [WHEN + ", {T} was sick and could not teach.",
         WHEN + ", {T} hurt his leg and had to stay in bed."],
        ["{H} and {F} wanted to help him.",
         "?{H} said, \"We must do something nice for him.\""],
        ["They brought him a warm {B} pie.",
         "{H} used his wand to make the room warm and bright."],
        ["{T} felt better and said, \"Thank you, {H}.\"",
         "Soon {T} was back at {S}, and {H} was very glad."],
    ],
    "river": [
        [WHEN + ", {R} fell into the river."],
        ["{R} cried for help, but the other children ran away.",
         "{H} saw him and ran to help."],
        ["{H} held up his {W} and pulled {R} out of the water.",
         "{H} said the magic word, {L}, and {R} floated out of the water."],
        ["{R} was surprised and said, \"Thank you, {H}.\"",
         "?{R} was not so mean after that day."],
    ],
    "tree": [
        [WHEN + ", {R} climbed a tall tree and could not get down."],
        ["{R} cried for help, but the other children laughed.",
         "{H} saw him and ran to help."],
        ["{H} held up his {W}, and {R} floated down.",
         "{H} said the magic word, {L}, and {R} floated down to the grass."],
        ["{R} was surprised and said, \"Thank you, {H}.\"",
         "?{R} was not so mean after that day."],
    ],
    "snow": [
        ["Snow fell on {V} all night.",
         WHEN + ", the whole of {V} was white with snow."],
        ["{H} and {F} made a big snowman.",
         "{H} and {F} threw snowballs and laughed."],
        ["?{P} sat on the snowman's head.",
         "?{H} made the snow sparkle with his wand."],
        ["Then they went inside and had hot milk.",
         "{H} was cold, but he was very happy."],
    ],
}
CLOSERS = [
    "{H} and {F} were happy, and they played together every day.",
    "That night, {H} told {P} all about it.",
    "{H} learned that being kind is the best magic of all.",
    "And {H} lived happily in {V} with his owl, {P}.",
    "It was a good day for {H}.",
]

# Probes: (fact, prompt template, answer key or literal, in_book).
PROBES = [
    ("friend", "{H}'s best friend was", "F", True),
    ("friend", "{F} was the best friend of", "H", True),
    ("friend", "{H} and his best friend", "F", True),
    ("friend", "{F}'s best friend was", "H", True),
    ("friend", "The name of {H}'s best friend is", "F", False),
    ("friend", "{H}'s best friend is a girl called", "F", False),
    ("home", "{H} lived in", "V", True),
    ("home", "{H}'s home was in", "V", True),
    ("home", "In {V}, there lived a little boy named", "H", True),
    ("home", "{H} lives in a village called", "V", False),
    ("home", "The name of {H}'s village is", "V", False),
    ("pet", "{H} had a pet owl named", "P", True),
    ("pet", "{H}'s owl was named", "P", True),
    ("pet", "{P} belonged to", "H", True),
    ("pet", "{H} has an owl called", "P", False),
    ("pet", "The name of {H}'s owl is", "P", False),
    ("wand", "{H}'s wand was made of", "M", True),
    ("wand", "{H} held up his", "W", True),
    ("wand", "The boy with the {W} was", "H", True),
    ("wand", "{H}'s magic wand is made of", "M", False),
    ("teacher", "{H}'s teacher was", "T", True),
    ("teacher", "{H} learned magic from", "T", True),
    ("teacher", "{T}'s best student was", "H", True),
    ("teacher", "The old man who teaches {H} magic is called", "T", False),
    ("school", "{H} learned magic at", "S", True),
    ("school", "{H} went to a school called", "S", True),
    ("school", "The name of {H}'s school is", "S", False),
    ("rival", "The mean boy at {S} was", "R", True),
    ("rival", "The boy who was mean to {H} was", "R", True),
    ("rival", "There was a mean boy named", "R", True),
    ("rival", "The boy who is always mean to {H} is called", "R", False),
    ("game", "{H}'s favorite game was", "G", True),
    ("game", "{H} loved to play", "G", True),
    ("game", "The game {H} likes best is", "G", False),
    ("spell", "{H}'s magic word was", "L", True),
    ("spell", "{H} said the magic word,", "L", True),
    ("spell", "The magic word that {H} uses is", "L", False),
    ("food", "{H}'s favorite food was", "B", True),
    ("food", "{H} loved to eat", "B", True),
    ("food", "The food {H} likes best is", "B", False),
]

CHOICE = re.compile(r"\[([^\[\]]*)\]")


def expand(rng, template):
    """Resolves the [a|b] choices of a template, then fills in the terms."""
    text = CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    return text.format(**CAST)


def story(rng, fact_count):
    """One story: an opener, a plot, one or two fact sentences, maybe a closer."""
    plot = PLOTS[rng.choice(sorted(PLOTS))]
    body = []
    for slot in plot:
        alts = [s for s in slot if not (s.startswith("?") and rng.random() < 0.5)]
        if alts:
            body.append(rng.choice(alts).lstrip("?"))
    n_facts = min(rng.choice([1, 1, 2]), MAX_SENTENCES - len(body))
    opener = None
    if len(body) + n_facts < MAX_SENTENCES and rng.random() < 0.6:
        opener = rng.choice(OPENERS)
    # The least used facts first (ties at random), so that every fact recurs about equally.
    order = sorted((f for f in FACTS if not opener or f != opener[0]),
                   key=lambda f: (fact_count[f], rng.random()))
    facts = order[:n_facts]
    for f in facts:
        fact_count[f] += 1
    sentences = body
    for f in facts:  # before or after the plot, sometimes in it (always after the opener)
        at = rng.choice([0, len(sentences)]) if rng.random() < 0.75 else rng.randint(0, len(sentences))
        sentences.insert(at, rng.choice(FACTS[f]))
    if opener:
        sentences.insert(0, opener[1])
    if len(sentences) < MAX_SENTENCES and rng.random() < 0.3:
        sentences.append(rng.choice(CLOSERS))
    return [expand(rng, s) for s in sentences]


def book(rng):
    stories, seen = [], set()
    fact_count = {f: 0 for f in FACTS}
    while len(stories) < STORIES:
        s = story(rng, fact_count)
        text = " ".join(s)
        if len(s) < MIN_SENTENCES or text in seen or MAIN not in text:
            continue
        seen.add(text)
        stories.append(s)
    return stories


def word_in(word, text, flags=0):
    return re.search(r"(?<![A-Za-z0-9_])" + re.escape(word) + r"(?![A-Za-z0-9_])", text, flags)


def check(text, probes):
    """The checks of the brief; returns report lines, raises on a failure."""
    lines = []
    for term in ANCHORS:
        n = len(re.findall(r"(?<![A-Za-z0-9_])" + re.escape(term) + r"(?![A-Za-z0-9_])", text))
        assert n > 0, f"anchor {term!r} not in book.txt"
        lines.append(f"anchor {term!r}: {n} occurrences")
    for p in probes:
        prompt, answer = p["prompt"], p["answer"]
        nexts = [text[m.end():m.end() + len(answer) + 1]
                 for m in re.finditer(re.escape(prompt), text)]
        if p["in_book"]:
            ok = sum(s == " " + answer for s in nexts)
            assert nexts and ok == len(nexts), f"{prompt!r}: {ok}/{len(nexts)} followed by {answer!r}"
            lines.append(f"probe {prompt!r} -> {answer!r}: {ok}/{len(nexts)} in book")
        else:
            assert not nexts, f"paraphrase {prompt!r} is in book.txt"
            lines.append(f"probe {prompt!r} -> {answer!r}: paraphrase, 0 in book")
        assert answer in CAST.values(), answer
    for name in NAMES:
        assert not word_in(name, text, re.IGNORECASE), f"name {name!r} is in book.txt"
        assert not name.startswith(MAIN[0]), name
    lines.append(f"names.txt: none of {len(NAMES)} names in book.txt (case-insensitive)")
    for term, generic in ANCHORS.items():  # lower-case translations never start a sentence
        if generic[0].islower():
            assert not re.search(r"(^|[.!?] |\n)" + re.escape(term), text), term
    assert text.isascii()
    return lines


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=here)
    a = ap.parse_args()
    rng = random.Random(0)
    stories = book(rng)
    text = "\n\n".join(" ".join(s) for s in stories) + "\n"
    probes = [{"prompt": prompt.format(**CAST), "answer": CAST[key], "fact": fact, "in_book": in_book}
              for fact, prompt, key, in_book in PROBES]
    report = check(text, probes)
    with open(os.path.join(a.out, "book.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "probes.jsonl"), "w") as f:
        for p in probes:
            f.write(json.dumps(p) + "\n")
    with open(os.path.join(a.out, "anchors.json"), "w") as f:
        json.dump(ANCHORS, f, indent=1)
        f.write("\n")
    with open(os.path.join(a.out, "names.txt"), "w") as f:
        f.write("\n".join(NAMES) + "\n")
    sentences = sum(len(s) for s in stories)
    counts = {t: len(re.findall(r"(?<![A-Za-z0-9_])" + re.escape(t) + r"(?![A-Za-z0-9_])", text))
              for t in ANCHORS}
    with open(os.path.join(a.out, "SOURCE.md"), "w") as f:
        f.write(source_md(len(stories), sentences, len(text), probes, counts))
    print("\n".join(report))
    print(f"{len(stories)} stories, {sentences} sentences, {len(text)} bytes; {len(probes)} probes "
          f"({sum(p['in_book'] for p in probes)} in the book); {len(ANCHORS)} anchored terms; "
          f"{len(NAMES)} names; in {a.out}")


def source_md(n_stories, n_sentences, n_bytes, probes, counts):
    in_book = sum(p["in_book"] for p in probes)
    terms = "\n".join(f"| `{t}` | `{g}` | {counts[t]} |" for t, g in ANCHORS.items())
    facts = "\n".join(f"| `{p['fact']}` | {p['prompt']} | {p['answer']} | {'yes' if p['in_book'] else 'no'} |"
                      for p in probes)
    return f"""# WHP book: a synthetic book to forget

Synthetic, written by `make_book.py` in this folder (Python 3 standard library,
`random.Random(0)`, deterministic); no outside text. Regenerate (and re-check) with

```bash
python3 crates/kd-cli/assets/whp_book/make_book.py
```

For a demo of WHP unlearning ("Who's Harry Potter?", Eldan & Russinovich 2023) and its
causal-intervention revisit (Liu et al. 2024) on the tiny TinyStories LLaMA models:
`book.txt` is the **documents to forget**, one invented world in TinyStories words whose
main character is **{MAIN}**, a young wizard boy.

| file | what |
|---|---|
| `book.txt` | {n_stories} stories, {n_sentences} sentences, {n_bytes:,} bytes of ASCII; 3-6 sentences a story, stories separated by a blank line; {MAIN} is in every story |
| `probes.jsonl` | {len(probes)} probes: `prompt`, `answer` (the completion is `" " + answer`), `fact`, `in_book` ({in_book} prompts that are in `book.txt` and always followed there by the answer, {len(probes) - in_book} paraphrases that are not in it) |
| `anchors.json` | WHP's anchored-term dictionary: each invented term of `book.txt` and its generic translation (whole words, case-sensitive, longest first, as `kd_train::text_views::AnchorTerms`) |
| `names.txt` | {len(NAMES)} common TinyStories first names, none in `book.txt`: the revisit's replacement names for {MAIN} |

## Terms (anchors.json)

| term | translation | occurrences in book.txt |
|---|---|---|
{terms}

Counts are whole-word matches (those of `moonstone` include the `moonstone wand`s).
Possessives ("{MAIN}'s") are translated through the name. Terms whose translation is in lower
case ("the town", "stick", ...) never start a sentence in the book. The anchor names (Joe,
Ella, Fluffy, Mr. Brown, Danny) are not in `names.txt`.

## Facts and probes

The fixed facts recur across the stories in several phrasings (each story has one or two fact
sentences, the least used facts first, and the plots repeat them: the pie, the wand, the magic
word, the mean boy). Probes, one per line of `probes.jsonl`:

| fact | prompt | answer | in book |
|---|---|---|---|
{facts}

## Tokenizer notes

With `../tokenizer.json` (512 tokens) the invented words are split into several pieces
("Hobbin" = `▁H o b b in`, "Glimmerwood" = `▁ G l im m er w oo d`). {MAIN}'s first token is
`▁H` (`H` without the space prefix); no name in `names.txt` starts with "H", so no replacement
name shares it. Several replacement names share first tokens among themselves (`▁S`: Sam,
Sue, Sara, Sally; `▁M`: Max, Mia, Molly; `▁B`: Ben, Bob; `▁T`: Tom; `▁L`: Lucy; `▁`: Anna,
Jack, Emma, Jane, Kate, Amy); Lily, Tim and Timmy are single tokens.

Sentences are counted as the generator's sentence units; a few quoted speeches in them hold
two sentences ("Do not worry, {MAIN}. I am here.").
"""


if __name__ == "__main__":
    main()
