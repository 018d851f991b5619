"""The embedded story corpus: short children's stories that the project writes itself.

This module generates stories in the TinyStories style (children and animals, places, a small
problem and how it is solved, feelings, dialogue in double quotes, paragraphs split by newlines)
from hand-written word lists and sentence templates, deterministically from a seed. It lets the
pipeline run from a fresh clone with no download and no third-party text. It does not aim at
literature: the stories only need to be varied enough that a BPE tokenizer finds real merges and
a small language model has structure to learn.

How a story is made: pick a cast (a child, an animal or two children as the hero, a friend, a
grown-up), a place, a thing and a plot. Every sentence is a template whose ``[a|b|c]`` alternatives
are chosen at random and whose ``{slots}`` are filled from the cast; a slot written with a capital
(``{He}``, ``{Friend}``) gives the same word capitalised. Small helpers handle the grammar: a/an,
he/she/they (with was/were), plurals, and the -ing and past forms of verbs.

All randomness comes from one ``random.Random(seed)``: the same seed gives the same stories, and
``iter_stories(n, seed)`` yields the first ``n`` stories of the seed's endless stream.
"""

from __future__ import annotations

import itertools
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gpt_pipeline.storage import atomic_write

DEFAULT_NUM_STORIES = 5000  # stories in the embedded corpus (issue 2: at least 5,000)
PARQUET_BATCH = 10_000  # stories per Parquet row group when writing large corpora

_CHOICE = re.compile(r"\[([^\[\]]*)\]")

# --- grammar helpers -------------------------------------------------------------------------

_CONSONANT_SOUND = ("uni", "use", "eu", "one", "once")  # vowel letter, consonant sound
_VOWEL_SOUND = ("hour", "honest")  # consonant letter, vowel sound


def with_article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front, chosen by the sound of its first word.

    Example:
        >>> [with_article(w) for w in ("apple", "big apple", "unicorn", "owl", "hour")]
        ['an apple', 'a big apple', 'a unicorn', 'an owl', 'an hour']
    """
    word = phrase.lower()
    vowel = (word[0] in "aeiou" and not word.startswith(_CONSONANT_SOUND)) or word.startswith(
        _VOWEL_SOUND
    )
    return ("an " if vowel else "a ") + phrase


_IRREGULAR_PLURALS = {
    "mouse": "mice", "goose": "geese", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "child": "children", "wolf": "wolves", "leaf": "leaves", "loaf": "loaves", "scarf": "scarves",
    "potato": "potatoes", "tomato": "tomatoes", "mango": "mangoes", "octopus": "octopuses",
}


def plural(noun: str) -> str:
    """The plural of ``noun`` (of its last word, for phrases like "teddy bear").

    Example:
        >>> [plural(w) for w in ("cat", "bunny", "fox", "mouse", "teddy bear", "day")]
        ['cats', 'bunnies', 'foxes', 'mice', 'teddy bears', 'days']
    """
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        last = _IRREGULAR_PLURALS[last]
    elif last.endswith("y") and last[-2:-1] not in tuple("aeiou"):
        last = last[:-1] + "ies"
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    else:
        last += "s"
    return f"{head} {last}" if head else last


_IRREGULAR_PAST = {
    "build": "built", "draw": "drew", "sing": "sang", "swim": "swam", "dig": "dug", "run": "ran",
    "ride": "rode", "fly": "flew", "make": "made", "read": "read", "throw": "threw",
    "catch": "caught", "eat": "ate", "feed": "fed", "hide": "hid", "find": "found", "go": "went",
    "blow": "blew", "tell": "told", "write": "wrote", "sit": "sat", "take": "took",
}
_DOUBLE_FINAL = {"hop", "skip", "jog", "swim", "run", "dig", "clap", "nap", "hug", "stop", "drop",
                 "plan", "shop"}


def ing_form(phrase: str) -> str:
    """``phrase`` with its first word (a verb) in the -ing form.

    Example:
        >>> ing_form("fly kites"), ing_form("ride a bike"), ing_form("swim in the lake")
        ('flying kites', 'riding a bike', 'swimming in the lake')
    """
    verb, _, rest = phrase.partition(" ")
    if verb in _DOUBLE_FINAL:
        verb += verb[-1]
    elif verb.endswith("e") and not verb.endswith(("ee", "ye")):
        verb = verb[:-1]
    return f"{verb}ing {rest}".rstrip()


def past_form(phrase: str) -> str:
    """``phrase`` with its first word (a verb) in the simple past.

    Example:
        >>> [past_form(p) for p in ("play tag", "bake cookies", "fly kites", "hop", "carry it")]
        ['played tag', 'baked cookies', 'flew kites', 'hopped', 'carried it']
    """
    verb, _, rest = phrase.partition(" ")
    if verb in _IRREGULAR_PAST:
        verb = _IRREGULAR_PAST[verb]
    elif verb in _DOUBLE_FINAL:
        verb += verb[-1] + "ed"
    elif verb.endswith("e"):
        verb += "d"
    elif verb.endswith("y") and verb[-2] not in "aeiou":
        verb = verb[:-1] + "ied"
    else:
        verb += "ed"
    return f"{verb} {rest}".rstrip()


class _Slots(dict):
    """Template slots; ``{Key}`` gives the value of ``{key}`` with a capital first letter."""

    def __missing__(self, key: str) -> str:
        if not key[:1].isupper():
            raise KeyError(key)
        value = self[key[0].lower() + key[1:]]
        return value[:1].upper() + value[1:]


def expand(template: str, slots: dict, rng: random.Random) -> str:
    """Pick one alternative in every ``[a|b]`` group (left to right), then fill the ``{slots}``.

    Example:
        >>> expand("[Once|One day], {he} saw {a_animal}.", _Slots(he="she", a_animal="an owl"),
        ...        random.Random(1))
        'Once, she saw an owl.'
    """
    text = _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    return text.format_map(slots)


# --- words and templates (all written for this project) ---------------------------------------


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


GIRLS = _words("""Lily, Mia, Emma, Sophie, Lucy, Anna, Sara, Ella, Zoe, Amy, Grace, Ruby, Chloe,
    Daisy, Rosie, Molly, Hannah, Maya, Nora, Ivy, Alice, Clara, Julia, Kate, Nina, Olivia, Jane,
    Sue, Tara, Wendy, Jenny, Hazel, Leah, Fiona, Bella, Poppy""")
BOYS = _words("""Tom, Ben, Sam, Jack, Leo, Tim, Jake, Oliver, Noah, Luke, Finn, Owen, Jim, Alex,
    Peter, Henry, Oscar, Toby, Danny, Eli, Adam, Ryan, Billy, Joe, Mark, Paul, Ricky, Theo, Hugo,
    Ned, Ray, Kevin, Sid, Bob, Milo""")
PET_NAMES = _words("""Spot, Fluffy, Buddy, Whiskers, Pip, Coco, Bubbles, Sunny, Patch, Ziggy, Bingo,
    Rusty, Snowy, Peanut, Biscuit, Pepper, Button, Tiny, Fuzzy, Rocky, Dot, Mittens, Hoppy, Shadow,
    Pebble, Twinkle, Nibbles, Squeak, Waddles, Honey, Ginger, Scout, Lulu, Bobo, Gus, Max""")
ANIMALS = _words("""dog, cat, puppy, kitten, bunny, rabbit, bird, duck, frog, fox, bear, mouse, owl,
    squirrel, turtle, pig, cow, horse, sheep, goat, lion, tiger, elephant, monkey, giraffe, zebra,
    penguin, fish, butterfly, bee, ladybug, hedgehog, deer, goose, hen, lamb, pony, kangaroo, koala,
    panda, dolphin, snail, crab, octopus, beaver, raccoon, parrot, dragon, unicorn, wolf""")
CREATURE_ADJECTIVES = _words("""little, big, tiny, fluffy, happy, old, young, funny, brave, sleepy,
    friendly, silly, fuzzy, clever, gentle, busy, curious, playful, lazy, kind, cheerful, shy,
    proud, spotted, striped, cute, smart, quiet, noisy, speedy, lucky, grumpy, hungry, chubby,
    wise""")
THING_ADJECTIVES = _words("""shiny, old, new, soft, big, little, tiny, pretty, special, magic,
    wooden, bouncy, colorful, fancy, round, sparkly, fluffy, striped, spotted, squeaky, smooth,
    tall""")
COLORS = _words("red, blue, green, yellow, orange, purple, pink, white, black, brown, gold, silver")
THINGS = _words("""ball, kite, doll, teddy bear, toy car, toy train, hat, scarf, balloon, toy boat,
    drum, book, puzzle, robot, truck, yo-yo, whistle, bucket, shovel, umbrella, rocket, bell,
    spinning top, jump rope, blanket, backpack, marble, shell, ring, necklace, crown, wand, mitten,
    cup, basket, flag, toy plane, pillow, jar, guitar, flute, paintbrush, block tower,
    sticker book""")
FOODS = _words("""apple, banana, cookie, cupcake, muffin, sandwich, pie, strawberry, cherry, grape,
    orange, pear, peach, plum, pancake, carrot, cracker, pretzel, cake, tomato, donut, lollipop,
    berry, mango, lemon, melon, biscuit, bun, egg""")
ACTIVITIES = _words("""play tag, play catch, fly kites, build sandcastles, draw pictures,
    sing songs, dance, ride a bike, read books, jump in puddles, climb trees, run in the grass,
    splash in the water, pick flowers, chase butterflies, play hide and seek, swim in the lake,
    dig in the sand, blow bubbles, bake cookies, paint, collect shells, feed the ducks,
    hop on one foot, roll down the hill, look at the stars, watch the clouds, play on the swings,
    build a fort, tell jokes, play the drum, make mud pies, count the birds, play dress-up,
    go fishing""")
TRAITS = _words("""kind, curious, brave, shy, cheerful, playful, clever, gentle, helpful, funny,
    polite, friendly, careful, busy, quiet, happy, silly, bright""")
TIMES = _words("""one day, one sunny day, one sunny morning, one warm afternoon, one bright morning,
    one windy day, one cool autumn day, one spring morning, one summer day, early one morning,
    the next day, after lunch, one Saturday, on a cold winter day, one quiet evening""")
GROWN_UPS = [("mom", "Mom", "she"), ("dad", "Dad", "he"), ("grandma", "Grandma", "she"),
             ("grandpa", "Grandpa", "he"), ("aunt", "Auntie", "she"), ("uncle", "Uncle", "he"),
             ("mother", "Mother", "she"), ("father", "Father", "he")]
PLACES = [(place, prep, spots.split("|")) for place, prep, spots in (
    ("the park", "in", "the slide|the swings|a big oak tree|the pond|a bench"),
    ("the beach", "at", "a big rock|the sand castle|an old boat|the waves"),
    ("the forest", "in", "a tall pine tree|a mossy log|a thick bush|a little stream"),
    ("the garden", "in", "the flower bed|the apple tree|the fence|the vegetable patch"),
    ("the farm", "on", "the red barn|the haystack|the fence|the duck pond"),
    ("the backyard", "in", "the fence|the old shed|the sandbox|the swing"),
    ("the meadow", "in", "the tall grass|a big rock|the wild flowers|an old tree"),
    ("the lake", "by", "the dock|the reeds|a flat rock|the little boat"),
    ("the playground", "at", "the slide|the sandbox|the monkey bars|the seesaw"),
    ("the zoo", "at", "the elephant house|the big pond|the gift shop|a bench"),
    ("the hill", "on", "a big rock|the old windmill|a lone tree|the top"),
    ("the river", "by", "the bridge|a big rock|the muddy bank|the tall reeds"),
    ("the woods", "in", "a hollow log|a big tree|the berry bushes|a fallen branch"),
    ("the town square", "in", "the fountain|the clock tower|a bench|the ice cream cart"),
    ("the orchard", "in", "the apple trees|a wooden ladder|a big basket|the fence"),
    ("the pond", "by", "the lily pads|the reeds|a flat stone|the little bridge"),
    ("the jungle", "in", "a giant leaf|a tall palm tree|the vines|a big waterfall"),
    ("the snowy hill", "on", "a snowman|a big pine tree|the sled path|a pile of snow"),
    ("the campsite", "at", "the tent|the campfire|a big log|the trail"),
    ("the field", "in", "the scarecrow|the tall corn|a big rock|the old gate"),
    ("the seaside", "at", "the lighthouse|a rock pool|the pier|the sand dunes"),
)]

# Sections start with "## name"; plot sections hold "problem:", "fix:" and "lesson:" lines (any
# fix follows any problem of its plot). An indented line continues the line above it.
TEMPLATES = '''
## openings
Once upon a time, there {was} {intro}.
Once upon a time, in a [small|quiet|sunny|busy|faraway] [town|village], there lived {intro}.
There {was} once {intro} who lived [in a small house|near {place}|with {his} family|by a big river].
[One day|Once], {intro} woke up [early|with a big smile|feeling very happy|before the sun came up].
{Intro} lived in a [small|cozy|little|blue|yellow] house [near the woods|by the sea|on a quiet
    street|on top of a hill|next to a big park].
Long ago, there {was} {intro}.
In a [green|big|quiet|pretty] [valley|town|forest|village] lived {intro}.
## settings
{He} loved to {activity}[ more than anything| every day| with {his} friends| all day long].
{His} favorite thing in the whole world was {his} {thing_desc}.
{He} {was} [very|always|a little] {trait}[ and liked to help others| and liked to ask questions| and
    loved to explore| and always said please and thank you].
Every [morning|day|afternoon|weekend], {he} went to {place} to {activity2}.
{He} liked the color {color} [best|more than any other color|because it made {him} smile].
{He} lived with {adult}[ and a fat old cat| and two goldfish| and a noisy parrot|].
{He} liked to eat {foods}, especially [for breakfast|after a long day of play|with {adult}].
## friends
{His} best friend was {f_intro}.
{He} had a [good|special|very good] friend, {f_intro}.
{He} often played with {f_intro}[ who lived next door| from down the street|].
Every day, {he} met {his} friend, {f_intro}, [to {activity2}|and they talked and laughed].
## endings
{He} felt [happy|very happy|glad|proud] and [smiled|laughed|sang a little song] all the way home.
And they all lived happily ever after.
It was the best day ever.
That night, {name} went to bed with a big smile.
{Name} and {friend} played together until the sun went down.
{He} could not wait to tell {adult} all about it.
From then on, {name} and {friend} were the best of friends.
{Name} knew that friends always help each other.
The next day, they went to {place} again to {activity2}.
## plot lost
problem: {Time}, {name} took {his} {thing_desc} to {place}. {He} played with it [for a long time|all
    morning|until the sun was low]. When it was time to go home, {he} looked
    [around|down|everywhere] and the {thing} was gone! "[Oh no!|Oh dear!|Where is it?] Where is my
    {thing}?" {speaker} [cried|said]. {He} felt [very sad|so sad|worried|upset] and [started to
    cry|sat down on the ground|did not know what to do].
problem: {Time}, {name} could not find {his} {thing}. {He} looked under the bed, [in the
    closet|behind the door|in the toy box] and [in the kitchen|under the table|in the garden]. It
    was not there. "Have you seen my {thing}?" {speaker} asked {adult}. "No, I have not," said
    {adult_voc}. "[Maybe you left it|Did you take it] {at_place}?"
fix: {Friend} [saw|heard] {him} and came over. "Don't be sad, I will help you look," {f_he} said.
    Together they looked near {spot} and [behind|under|around] {spot2}. At last, {friend}
    [shouted|said], "[Look|Here it is|I found it]!" The {thing} was [under a pile of leaves|behind a
    big rock|in the tall grass|next to {spot}]. {Name} [hugged|thanked] {f_him}[ and smiled| with a
    big smile|].
fix: {Name} went back to {place} with {friend}. They looked [high and low|everywhere|in every
    corner]. Then {friend} [saw|spotted] something {color} near {spot}. It was the {thing}! "[Thank
    you|You found it|Hooray]!" said {speaker}. "You are a [good|true|kind|great] friend."
lesson: From that day on, {name} [always kept|took good care of|never forgot] {his} {thing}.
lesson: {Name} learned to be careful with {his} things[, and {he} never lost the {thing} again|].
## plot stuck
problem: {Time}, {name} and {friend} were playing with {his} {thing_desc} {at_place}. [A big gust of
    wind came|{Friend} threw it too high|{Name} threw it very hard], and the {thing} [flew up|went
    up] into a tall tree. It was stuck [on a high branch|at the very top|between two branches]! "How
    will we get it down?" asked {friend}. {Name} [jumped|stood on {his} toes|reached up], but the
    branch was too high.
fix: {Name} ran to get {adult}. {Adult} brought a [long|tall|wooden] ladder and climbed up
    [slowly|carefully]. {A_he} reached out, got the {thing} and climbed back down. "Thank you,
    {adult_voc}!" said {speaker}[ with a big smile| and gave {a_him} a hug|].
fix: Then {friend} had an idea. "Let's use a long stick!" {f_he} said. {Name} found a stick [near
    {spot}|on the ground] and [poked|pushed] the branch [gently|again and again]. [Slowly|Soon|At
    last], the {thing} fell down into {his} arms. "We did it!" they shouted together.
lesson: {Name} learned that a good idea and a little help can fix almost anything.
lesson: After that, {name} played with the {thing} far away from the tall trees.
## plot bird
problem: {Time}, {name} {was} walking {at_place} when {he} heard a [small|tiny|sad] sound. Near
    {spot} sat a little bird. Its wing was hurt and it could not fly. "Poor little bird," said
    {speaker}. "[I want to help you|Don't be scared|You must be so cold]."
fix: {Name} put the bird in a soft box with a blanket and took it home. {Adult} showed {him} how to
    give it water and seeds. Every day {name} took care of the bird. After [a week|many days|a few
    days], its wing was better, and the bird flew up into the sky and sang a happy song.
fix: {Name} called {friend}, and together they made a little nest [out of grass and leaves|in a shoe
    box]. They gave the bird [seeds|bread crumbs|water] and kept it warm. Soon the bird could fly
    again. It flew around them [three times|in a circle|once], as if to say thank you.
lesson: {Name} learned that being kind to animals is [important|a good thing to do].
lesson: Every spring after that, a little bird came to sing [by {his} window|near {spot}].
## plot rain
problem: {Time}, {name} wanted to {activity} {at_place} with {friend}. But when {he} looked out the
    window, [dark clouds filled the sky|it was raining hard|big drops of rain were falling]. "Oh
    no," said {speaker}. "Now we can't {activity}." {He} felt [sad|grumpy|very disappointed].
fix: {Adult} [smiled|had an idea]. "Why don't you build a fort inside?" {a_he} said. So {name} and
    {friend} used [blankets|pillows|chairs and blankets] to make a big fort in the living room. They
    [told stories|ate {foods}|played games] inside it, and it was [so much fun|very cozy].
fix: So they stayed inside and [drew pictures|baked {foods} with {adult}|played with blocks]. After
    a while, the rain stopped and a big rainbow came out. "[Look|Wow], a rainbow!" shouted {friend}.
    They ran outside to {activity} after all.
lesson: {Name} learned that a rainy day can be fun too.
lesson: {Name} found out that fun can happen anywhere, even on a rainy day.
## plot brave
problem: {Time}, {adult} took {name} to {place}. There was a [big dark cave|deep pond|very tall
    slide|big noisy dog] there, and {name} felt scared. {He} [hid behind {adult}|held {adult}'s hand
    very tight|did not want to go near it]. "I am scared," {speaker} whispered.
problem: {Time}, there was a big storm. "[Boom|Crash]!" went the thunder, and the lights went out.
    {Name} {was} very scared and [hid under the blanket|started to shake|ran to {adult}]. "I don't
    like the dark," {speaker} said [quietly|in a small voice].
fix: {Adult} knelt down and said, "It is okay to be scared. I am right here with you." {Name} took a
    deep breath and [counted to ten|held {a_his} hand|sang a little song]. Step by step, {he} felt
    braver, and soon {he} {was} [smiling|laughing|not scared at all].
fix: {Friend} [came|ran] over and said, "Come on, we can be brave together." They held hands and
    [walked slowly|counted to three|looked at it together]. It was not so scary after all. Soon
    {name} {was} [laughing|smiling|having fun].
lesson: {Name} learned that being brave means trying even when you are scared.
lesson: After that day, {name} felt a little braver every day.
## plot share
problem: {Time}, {name} had {a_food} for [lunch|a snack] {at_place}. It looked
    [big|sweet|yummy|fresh] and {he} wanted to eat it all. Then {he} saw {friend} sitting [alone|on
    a rock|under a tree]. {Friend} looked [hungry|sad] because {f_he} had [no snack|forgotten
    {f_his} lunch|dropped {f_his} food in the mud].
fix: {Name} thought for a moment. Then {he} [broke|cut] the {food} in two and gave half to {friend}.
    "Here, you can have some," {speaker} said. {Friend} smiled. "Thank you! This is [so yummy|very
    good|the best {food} ever]!"
fix: {Name} walked over and said, "Do you want to share my {food}?" {Friend}'s face lit up. They sat
    together and ate the {food}, and it tasted even better than before.
lesson: {Name} learned that sharing makes everyone happy.
lesson: Sharing made {name} feel [warm inside|good|very happy], even more than eating.
## plot broken
problem: {Time}, {name} {was} playing with {his} {thing_desc} when it [fell on the floor|slipped and
    fell|dropped from the table] and broke! [Crack!|Snap!|Oh no!] {Name} [started to cry|felt very
    sad|looked at the pieces]. "My {thing} is broken," {he} [cried|sobbed|said].
fix: {Adult} came [in|over] and looked at the pieces. "Don't worry, we can fix it," {a_he} said.
    {A_he} [got some glue|found some tape|brought {a_his} tool box], and together they fixed the
    {thing}. It was [almost|just] as good as new.
fix: {Friend} came over [to play|to visit]. "I can help!" {f_he} said. They [found some glue|got
    some tape] and worked [carefully|slowly] until the {thing} was whole again. It looked a little
    different, but {name} loved it even more.
lesson: {Name} learned to be more careful with {his} toys.
lesson: {Name} learned that broken things can often be fixed with a little help.
## plot lonely
problem: {Time}, {name} saw {a_adj_animal} {at_place}. It was [alone|sitting by itself|hiding behind
    {spot}] and looked [shy|sad|lonely]. "Hello!" said {speaker}. "Do you want to play?" The
    {animal} did not [answer|say anything] at first.
fix: {Name} sat down [next to it|nearby] and [waited|smiled]. After a while, the {animal} came
    closer. "I am new here," it said softly. "I don't have any friends." "[Now you do|You can be my
    friend]!" said {speaker}. Soon they were {activity2_ing} together.
fix: {Name} showed the {animal} {his} {thing_desc} and [rolled|gave] it to the {animal}. The
    {animal} [smiled|laughed|jumped with joy]. They played [all afternoon|until it was time for
    dinner|all day], and the {animal} was not lonely anymore.
lesson: {Name} learned that a [kind word|smile] can make a new friend.
lesson: Now {name} had two friends, {friend} and the {animal}.
## plot practice
problem: {Time}, {name} wanted to learn to [ride a bike|swim|jump rope|climb a tree|whistle|skate].
    {He} tried, but {he} [fell down|could not do it|kept falling]. {He} tried again and again. "I
    can't do it!" {speaker} said [sadly|with a frown].
fix: {Adult} sat beside {him} and said, "Everyone falls at first. Keep trying, and you will get
    better." So {name} tried one more time, [slowly|carefully]. This time {he} did it! "I did it! I
    did it!" {speaker} shouted.
fix: {Friend} watched and said, "Let me help you." {F_he} showed {him} how to do it, step by step.
    {Name} practiced every day. [A few days later|After a week|Soon], {he} could do it all by
    {himself}!
lesson: {Name} learned that practice helps you get better.
lesson: {He} felt so proud of {himself} for not giving up.
## plot gift
problem: {Time}, {name} remembered that it was {adult}'s birthday. {He} wanted to give {a_him} a
    [special|nice|big] surprise, but {he} did not have any money. "What can I give?" {speaker}
    [wondered|asked {friend}].
fix: {Name} went to {place} and picked [some flowers|pretty {color} flowers|some shiny stones]. Then
    {he} [drew a picture|made a card] with a big {color} heart on it. When {adult} saw the gift,
    {a_he} smiled and gave {name} a big hug. "This is the best gift ever," {a_he} said.
fix: {Friend} had an idea. "Let's make a cake!" {f_he} said. They mixed flour, eggs and sugar, and
    put {foods} on top. The cake was a little [lopsided|messy|crooked], but {adult} loved it. "Thank
    you, my [dear|sweet|little] {kind}," {a_he} said.
lesson: {Name} learned that the best gifts come from the heart.
lesson: {Name} felt that giving was even better than getting.
## plot race
problem: {Time}, {name} and {friend} had a race [across {place}|to the big tree|to the end of the
    path]. "Ready, set, go!" [shouted {adult}|they shouted]. They ran as fast as they could. {Name}
    {was} [ahead|winning], but then {friend} [tripped over a rock|fell down|slipped in the mud] and
    [hurt {f_his} knee|began to cry].
fix: {Name} stopped running. {He} went back and helped {friend} get up. "Are you okay?" {speaker}
    asked. They walked to the finish together, [holding hands|side by side]. Winning did not matter
    anymore.
fix: {Name} [turned around|heard a cry] and ran back. "Let's finish together," {he} said, and gave
    {friend} a hand. [Everyone|{Adult}] clapped when they crossed the line together.
lesson: {Name} learned that helping a friend is better than winning.
lesson: It did not matter who won, because they had fun together.
## plot mess
problem: {Time}, {name} wanted to paint a picture in the kitchen. Soon there was paint everywhere:
    on the floor, on the table and even on {his} nose! When {adult} came in, {a_he} said, "Oh my!"
problem: {Time}, {name} played in the mud {at_place} and then ran into the house. There were muddy
    footprints all over the clean floor. {Adult} looked [very surprised|at the floor|at {name}].
    "What happened here?" {a_he} asked.
fix: {Name} looked at the mess and felt [bad|sorry]. "I am sorry, {adult_voc}," {he} said. "I will
    clean it up." {He} got a [cloth|broom|bucket of water] and cleaned [and cleaned|everything].
    {Adult} helped too, and soon the house was clean again.
fix: {Friend} came to help. Together they [swept the floor|wiped everything|washed the floor][ and
    sang a song as they worked|]. When they were done, {adult} smiled. "Thank you for cleaning up,"
    {a_he} said.
lesson: {Name} learned that it is good to say sorry and fix your mistakes.
lesson: After that, {name} always cleaned up after playing.
## plot treasure
problem: {Time}, {name} found [an old box|a little chest|a big basket|a dusty bag] {at_place}. "What
    is this?" {speaker} wondered. {He} {was} very curious. {He} called {friend}, and they opened it
    together.
fix: Inside, they found [a small {color} {thing}|lots of {things}|a note that said, "You are a good
    friend."|a little music box that played a sweet song]. "[What a surprise|This is amazing|It's a
    treasure]!" said {speaker}. They [shared it|took turns] and [played|laughed] all afternoon.
fix: It was full of [old|shiny|funny] {things}. {Name} and {friend} [took them to|showed them to]
    {adult}. "These were mine when I was little," {a_he} said with a smile. "Now they are yours."
lesson: {Name} learned that the best treasure is a friend to share it with.
lesson: {Name} kept the treasure in a special place[ under {his} bed| on {his} shelf|].
## plot seed
problem: {Time}, {adult} gave {name} a [tiny|little] seed. "Plant it and take care of it," {a_he}
    said. {Name} put the seed in the ground and gave it water. Every day {he} looked, but nothing
    happened. "Why is it not growing?" {speaker} asked.
fix: {Adult} said, "Be patient. Good things take time." So {name} kept watering the seed [every
    morning|each day]. One day, a little green [plant|sprout] came up! Soon it grew into a big
    {color} flower.
fix: {Friend} helped {him} [water it|pull the weeds] every day. After many days, a tall plant grew,
    full of [{foods}|pretty flowers]. They picked [some|a few] and shared them with everyone.
lesson: {Name} learned that waiting can be hard, but it is worth it.
lesson: {Name} {was} proud of {his} plant and took care of it every day.
## plot picnic
problem: {Time}, {name} and {adult} went to {place} for a picnic. They brought {foods},
    [juice|lemonade|water] and a big {color} blanket. But when {name} [looked away|turned around],
    {a_adj_animal} [grabbed|took] {a_food} and ran away!
fix: {Name} ran after the {animal}. "Hey, come back!" {he} called. The {animal} stopped by {spot}
    and looked [hungry|very hungry|sorry]. {Name} [felt sorry for it|smiled]. "You can keep it,"
    {he} said. "There is enough for everyone."
fix: {Name} [laughed|giggled]. "That {animal} must be very hungry," {he} said. {Adult} put some more
    {foods} near {spot} for the {animal}. The {animal} ate them all and [made a happy sound|hopped
    around happily].
lesson: {Name} learned that sharing with others feels good.
lesson: It was a picnic that {name} would never forget.
## plot found
problem: {Time}, {name} went to {place} with {adult}. There were so many things to see that {name}
    [walked too far|did not look where {he} {was} going]. When {he} looked up, {adult} was gone!
    {Name} felt very scared. "{Adult_voc}! Where are you?" {speaker} called.
fix: {Name} remembered what {adult} always said: "If you get lost, stay where you are." So {he} sat
    down near {spot} and waited. Soon {adult} came running. "There you are!" {a_he} said and gave
    {name} a big hug.
fix: A kind [lady|man] saw {name} and asked, "Are you lost?" {Name} nodded. The kind helper looked
    with {him}, and soon they found {adult} near {spot}. {Name} ran to {a_him} and hugged {a_him}
    tight.
lesson: {Name} learned to always stay close to {adult}.
lesson: After that, {name} always held {adult}'s hand in busy places.
'''


def _parse_templates(text: str) -> tuple[dict[str, list[str]], list[dict[str, list[str]]]]:
    # Joins continuation lines, then files each line under its section (and plot part).
    lines: list[str] = []
    for raw in text.strip().splitlines():
        if raw.startswith(" ") and lines:
            lines[-1] += " " + raw.strip()
        else:
            lines.append(raw.strip())
    sections: dict[str, list[str]] = {}
    plots: list[dict[str, list[str]]] = []
    current: list[str] = []
    for line in lines:
        if line.startswith("## plot "):
            plots.append({"problem": [], "fix": [], "lesson": []})
        elif line.startswith("## "):
            current = sections.setdefault(line[3:], [])
        elif plots and line.split(":", 1)[0] in plots[-1]:
            part, template = line.split(":", 1)
            plots[-1][part].append(template.strip())
        else:
            current.append(line)
    return sections, plots


_SECTIONS, PLOTS = _parse_templates(TEMPLATES)
OPENINGS, SETTINGS = _SECTIONS["openings"], _SECTIONS["settings"]
FRIENDS, ENDINGS = _SECTIONS["friends"], _SECTIONS["endings"]

# --- the cast ----------------------------------------------------------------------------------

_PRONOUNS = {  # subject, object, possessive, reflexive, was/were
    "he": ("he", "him", "his", "himself", "was"),
    "she": ("she", "her", "her", "herself", "was"),
    "they": ("they", "them", "their", "themselves", "were"),
}


def _person(rng: random.Random, prefix: str, slots: _Slots, taken: set[str], pair: bool) -> None:
    # Fills one character's slots: ``prefix`` "" for the hero, "f_" for the friend.
    if pair:
        first, second = rng.choice(GIRLS), rng.choice(BOYS)
        if rng.random() < 0.5:
            first, second = second, first
        names, gender, kind = (first, second), "they", "children"
        who = rng.choice(("two friends", "a brother and sister", "two cousins", "two neighbors"))
        intro = f"{who} named {first} and {second}"
    elif rng.random() < 0.65:
        gender = rng.choice(("she", "he"))
        kind = "girl" if gender == "she" else "boy"
        names = (rng.choice([n for n in (GIRLS if gender == "she" else BOYS) if n not in taken]),)
        size = rng.choice(("little", "little", "young", "small"))
        intro = f"{with_article(size + ' ' + kind)} named {names[0]}"
    else:
        gender, kind = rng.choice(("she", "he")), rng.choice(ANIMALS)
        names = (rng.choice([n for n in PET_NAMES if n not in taken]),)
        intro = f"{with_article(rng.choice(CREATURE_ADJECTIVES) + ' ' + kind)} named {names[0]}"
    taken.update(names)
    he, him, his, himself, was = _PRONOUNS[gender]
    slots.update({
        f"{prefix}name": " and ".join(names), f"{prefix}speaker": names[0], f"{prefix}intro": intro,
        f"{prefix}kind": kind, f"{prefix}he": he, f"{prefix}him": him, f"{prefix}his": his,
        f"{prefix}himself": himself, f"{prefix}was": was,
    })


def _cast(rng: random.Random) -> _Slots:
    # Everything a story's templates can name, drawn once per story.
    slots = _Slots()
    taken: set[str] = set()
    _person(rng, "", slots, taken, pair=rng.random() < 0.1)
    _person(rng, "f_", slots, taken, pair=False)
    slots["friend"] = slots["f_name"]
    grown_up, vocative, gender = rng.choice(GROWN_UPS)
    he, him, his = _PRONOUNS[gender][:3]
    slots.update({"adult": f"{slots['his']} {grown_up}", "adult_voc": vocative,
                  "a_he": he, "a_him": him, "a_his": his})
    place, prep, spots = rng.choice(PLACES)
    spot, spot2 = rng.sample(spots, 2)
    slots.update({"place": place, "at_place": f"{prep} {place}", "spot": spot, "spot2": spot2})
    color, thing = rng.choice(COLORS), rng.choice(THINGS)
    adjective = rng.choice(THING_ADJECTIVES)
    desc = rng.choice((f"{color} {thing}", f"{adjective} {thing}", f"{adjective} {color} {thing}"))
    food, animal = rng.choice(FOODS), rng.choice(ANIMALS)
    activity, activity2 = rng.sample(ACTIVITIES, 2)
    slots.update({
        "thing": thing, "thing_desc": desc, "things": plural(thing), "color": color,
        "food": food, "a_food": with_article(food), "foods": plural(food),
        "animal": animal,
        "a_adj_animal": with_article(f"{rng.choice(CREATURE_ADJECTIVES)} {animal}"),
        "activity": activity, "activity2": activity2, "activity2_ing": ing_form(activity2),
        "trait": rng.choice(TRAITS), "time": rng.choice(TIMES),
    })
    return slots


# --- stories -----------------------------------------------------------------------------------


def _story(rng: random.Random) -> str:
    slots = _cast(rng)
    plot = rng.choice(PLOTS)
    opening = [rng.choice(OPENINGS), *rng.sample(SETTINGS, rng.choice((1, 2, 2, 3))),
               rng.choice(FRIENDS)]
    paragraphs = [
        " ".join(expand(t, slots, rng) for t in opening),
        expand(rng.choice(plot["problem"]), slots, rng),
        expand(rng.choice(plot["fix"]), slots, rng),
        expand(rng.choice(plot["lesson"]) + " " + rng.choice(ENDINGS), slots, rng),
    ]
    separator = "\n\n" if rng.random() < 0.8 else "\n"
    return separator.join(paragraphs)


def iter_stories(num_stories: int = DEFAULT_NUM_STORIES, seed: int = 0) -> Iterator[str]:
    """Yield ``num_stories`` stories; the first ``k`` are the same for any ``num_stories >= k``.

    Example:
        >>> a = list(iter_stories(3, seed=7))
        >>> a == list(iter_stories(5, seed=7))[:3], a == list(iter_stories(3, seed=8))
        (True, False)
    """
    if isinstance(num_stories, bool) or not isinstance(num_stories, int) or num_stories < 0:
        raise ValueError(f"num_stories must be an integer >= 0, got {num_stories!r}")
    rng = random.Random(seed)
    return (_story(rng) for _ in range(num_stories))


def generate_stories(num_stories: int = DEFAULT_NUM_STORIES, seed: int = 0) -> list[str]:
    """The embedded corpus as a list: ``num_stories`` stories generated from ``seed``."""
    return list(iter_stories(num_stories, seed))


def write_corpus_parquet(
    path: str | os.PathLike, num_stories: int = DEFAULT_NUM_STORIES, seed: int = 0
) -> Path:
    """Write the corpus atomically as a Parquet file with one ``text`` column; returns ``path``.

    Stories are generated and written in row groups of ``PARQUET_BATCH``, so that a large corpus
    never has to fit in memory as one list.
    """
    schema = pa.schema([("text", pa.string())])
    stories = iter_stories(num_stories, seed)  # validates num_stories before any file is made

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            while batch := list(itertools.islice(stories, PARQUET_BATCH)):
                writer.write_table(pa.table({"text": pa.array(batch, pa.string())}, schema=schema))
            if num_stories == 0:
                writer.write_table(schema.empty_table())

    return atomic_write(path, write)
