"""Everyday assistant requests, generated from templates (offline training prompts, general).

MT-Bench's first turns (the general domain's evaluation prompts) span eight categories:
writing, roleplay, reasoning, math, coding, extraction, STEM and humanities. No package ships
a chat-prompt set disjoint from it, so the general domain's training prompts come from the
templates below, one or more per category, filled from small topic lists with a seeded
stream. They were written for specbench, not taken from MT-Bench, and share no sentence with
it (``tests/test_data.py`` checks that no generated prompt is an evaluation prompt and that
none shares a 6-word run with one). What they buy is the target's *own* responses to requests
of the evaluation's kinds: prose, lists, letters, dialogue, explanations.
"""

from __future__ import annotations

import random

# fmt: off
TOPICS = [
    "remote work", "urban gardening", "electric cars", "public libraries", "sleep", "recycling",
    "learning a second language", "volunteering", "video games", "space tourism", "coffee",
    "minimalism", "online privacy", "renewable energy", "team sports", "street food",
    "social media", "museums", "budget travel", "pets", "bicycles", "homework", "podcasts",
]
PEOPLE = [
    "a new neighbour", "your manager", "a customer who received a broken item", "a teacher",
    "an old friend", "a landlord", "the city council", "a job applicant", "your team",
]
FIGURES = [
    "a medieval blacksmith", "a ship's captain", "a detective", "a travel guide in Rome",
    "a chef", "a museum curator", "an astronaut", "a librarian", "a football coach",
]
CONCEPTS = [
    "photosynthesis", "inflation", "the water cycle", "plate tectonics", "vaccines",
    "compound interest", "supply and demand", "black holes", "machine learning",
    "the greenhouse effect", "natural selection", "electric circuits", "the immune system",
]
ERAS = [
    "the printing press", "the industrial revolution", "the Silk Road", "ancient Egypt",
    "the Renaissance", "the invention of the telephone", "the Roman Empire", "the Cold War",
]
AUDIENCES = ["a ten-year-old", "a high-school student", "a busy executive", "a grandparent"]
FORMS = ["short poem", "haiku", "limerick", "short story of about 150 words", "song chorus"]
ITEMS = ["a laptop", "running shoes", "a coffee maker", "a backpack", "a smartphone"]
TASKS = [
    "reverses the words in a sentence",
    "counts how often each letter appears in a string",
    "returns the second largest number in a list",
    "checks whether a string is a palindrome",
    "merges two sorted lists into one sorted list",
    "computes the running average of a list of numbers",
]
LANGUAGES = ["Python", "JavaScript", "C++", "Java"]
# fmt: on


def _fill(r: random.Random) -> str:
    t, t2 = r.sample(TOPICS, 2)
    templates = [
        # writing
        lambda: f"Write a blog post of about 300 words on the benefits and drawbacks of {t}.",
        lambda: f"Draft a polite email to {r.choice(PEOPLE)} about {t}. Keep it concise.",
        lambda: f"Write a {r.choice(FORMS)} about {t}.",
        lambda: f"Write a persuasive paragraph arguing that schools should teach {t}.",
        # roleplay
        lambda: f"Pretend you are {r.choice(FIGURES)}. Describe a typical day in your life.",
        lambda: f"Act as {r.choice(FIGURES)} and give advice to someone interested in {t}.",
        # reasoning
        lambda: (
            f"List three arguments for and three against {t}, then say which side you find "
            "more convincing and why."
        ),
        lambda: f"Compare {t} and {t2}: how are they similar, and how do they differ?",
        # math
        lambda: (
            f"A shop sells {r.choice(ITEMS)} for ${r.randint(20, 400)} and offers "
            f"{r.choice([10, 15, 20, 25])}% off. What is the sale price? Explain each step."
        ),
        # coding
        lambda: f"Write a {r.choice(LANGUAGES)} function that {r.choice(TASKS)}. Explain it.",
        # extraction
        lambda: (
            f"Read the review and list the product's pros and cons: \"I bought "
            f"{r.choice(ITEMS)} last month. It looks great and was easy to set up, but the "
            f'battery barely lasts a day and support never answered my emails."'
        ),
        # STEM
        lambda: f"Explain {r.choice(CONCEPTS)} to {r.choice(AUDIENCES)}.",
        lambda: f"What are the main ideas behind {r.choice(CONCEPTS)}? Give a real example.",
        # humanities
        lambda: f"How did {r.choice(ERAS)} change everyday life? Give three examples.",
        lambda: f"Describe how attitudes towards {t} have changed over the last fifty years.",
    ]
    return r.choice(templates)()


def chat_prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct templated assistant requests from the ``seed`` stream."""
    r, out, seen = random.Random(seed), [], set()
    for _ in range(200 * n):
        p = _fill(r)
        if p not in seen:
            seen.add(p)
            out.append(p)
            if len(out) == n:
                return out
    raise ValueError(f"the chat templates gave {len(out)} distinct prompts, asked for {n}")
