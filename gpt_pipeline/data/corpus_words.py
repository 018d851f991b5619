"""The embedded corpus's vocabulary and story templates, all written for this project.

Word lists (names, animals, things, foods, places, activities...) and the plot templates that
``gpt_pipeline.data.corpus`` fills in. Data only: the grammar and the randomness live in ``corpus``.
"""

from __future__ import annotations


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
