"""Word lists the scenario values are drawn from, and parameter names as words.

The lists are data, not behaviour: changing one changes every value drawn after it (seeded
datasets would differ), so extend them only with a new dataset version in mind.
"""

from __future__ import annotations

import re

#: Request styles of :func:`looptool.shared.scenarios.render.render_request`.
STYLES = ("terse", "polite", "verbose", "casual")

CITIES = [
    ("San Francisco", "CA"), ("New York", "NY"), ("Seattle", "WA"), ("Austin", "TX"), ("Chicago", "IL"),
    ("Boston", "MA"), ("Denver", "CO"), ("Portland", "OR"), ("Miami", "FL"), ("Los Angeles", "CA"),
    ("Atlanta", "GA"), ("Phoenix", "AZ"), ("San Diego", "CA"), ("Nashville", "TN"), ("Berkeley", "CA"),
]
WORLD_CITIES = ["London", "Paris", "Tokyo", "Berlin", "Madrid", "Toronto", "Sydney", "Rome", "Amsterdam", "Seoul",
                "Singapore", "Dublin", "Vienna", "Lisbon", "Prague"]
COUNTRIES = ["United States", "Canada", "France", "Germany", "Japan", "Spain", "Italy", "Brazil", "India", "Australia",
             "Mexico", "Netherlands", "Sweden", "Kenya", "South Korea"]
COUNTRY_CODES = ["US", "CA", "FR", "DE", "JP", "ES", "IT", "BR", "IN", "AU", "MX", "NL", "SE", "KE", "KR"]
FIRST_NAMES = ["Alice", "Bob", "Carlos", "Diana", "Emma", "Farid", "Grace", "Hiro", "Isabel", "Jamal", "Kira",
               "Liam", "Maya", "Noah", "Olivia", "Priya", "Quentin", "Rosa", "Sam", "Tara"]
LAST_NAMES = ["Smith", "Johnson", "Garcia", "Chen", "Patel", "Nguyen", "Kim", "Brown", "Martinez", "Lopez",
              "Wilson", "Anderson", "Taylor", "Moore", "Okafor"]
COMPANIES = ["Acme Corp", "Globex", "Initech", "Umbrella Labs", "Stark Industries", "Wayne Enterprises", "Hooli",
             "Vandelay Industries", "Tyrell Systems", "Soylent Foods"]
TICKERS = ["AAPL", "MSFT", "GOOGL", "AMZN", "TSLA", "NVDA", "META", "NFLX", "IBM", "ORCL"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "INR", "CNY", "MXN"]
LANGUAGES = ["English", "Spanish", "French", "German", "Japanese", "Italian", "Portuguese", "Korean", "Hindi", "Mandarin"]
LANGUAGE_CODES = ["en", "es", "fr", "de", "ja", "it", "pt", "ko", "hi", "zh"]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "purple", "orange", "gray", "navy"]
GENRES = ["jazz", "rock", "pop", "classical", "hip hop", "comedy", "drama", "thriller", "documentary", "fantasy"]
ARTISTS = ["Taylor Swift", "Miles Davis", "Adele", "The Beatles", "Beyonce", "Radiohead", "Norah Jones", "Coldplay"]
TITLES = ["The Silent Harbor", "Midnight Garden", "Echoes of Tomorrow", "A River in Winter", "The Last Orchard",
          "Paper Lanterns", "Northern Lights", "The Glass Bridge"]
CUISINES = ["Italian", "Mexican", "Thai", "Japanese", "Indian", "French", "Chinese", "Greek", "Korean", "Vietnamese"]
AIRPORTS = ["SFO", "JFK", "LAX", "SEA", "ORD", "BOS", "DEN", "ATL", "MIA", "LHR", "CDG", "NRT"]
UNITS_LENGTH = ["meters", "kilometers", "miles", "feet", "inches", "centimeters"]
UNITS_WEIGHT = ["kilograms", "grams", "pounds", "ounces"]
UNITS_TEMP = ["celsius", "fahrenheit", "kelvin"]
UNITS_GENERIC = ["units", "meters", "kilograms", "seconds", "liters", "miles"]
TOPICS = ["renewable energy", "machine learning", "ancient Rome", "climate change", "quantum computing",
          "marathon training", "sourdough baking", "electric vehicles", "ocean conservation", "space exploration"]
SENTENCES = ["Running late, see you at 6", "Please review the attached report", "Happy birthday, hope you have a great day",
             "The meeting moved to Thursday", "Can we reschedule our call", "Thanks for your help yesterday",
             "Dinner is ready at 7", "The package arrived this morning"]
ANIMALS = ["cat", "dog", "horse", "rabbit", "parrot", "turtle", "hamster", "goldfish"]
FOODS = ["pizza", "pasta", "salad", "sushi", "tacos", "ramen", "burger", "curry"]
DEVICES = ["living room lamp", "thermostat", "garage door", "kitchen speaker", "bedroom fan", "front door lock"]
STATUSES = ["active", "pending", "completed", "cancelled", "open", "closed"]
DOMAINS = ["example.com", "mail.com", "acme.io", "inbox.org"]
STREETS = ["Main St", "Oak Avenue", "Pine Road", "Maple Drive", "Elm Street", "Cedar Lane", "Market St", "Lake Shore Dr"]
CATEGORIES = ["electronics", "books", "sports", "travel", "health", "finance", "music", "education"]
SHAPES = ["circle", "square", "triangle", "rectangle", "hexagon"]
WORDS = ["alpha", "bravo", "delta", "harbor", "summit", "willow", "maple", "river", "falcon", "ember", "cobalt", "meadow"]
CHEM = ["H2O", "NaCl", "CO2", "C6H12O6", "O2", "CH4", "NH3"]
SPECIES = ["Homo sapiens", "Canis lupus", "Felis catus", "Panthera leo", "Quercus robur"]
INSTRUMENTS = ["piano", "guitar", "violin", "drums", "cello", "flute"]
SPORTS_TEAMS = ["Lakers", "Yankees", "Warriors", "Patriots", "Celtics", "Dodgers", "Real Madrid", "Manchester United"]
SPORTS = ["basketball", "soccer", "tennis", "baseball", "golf", "hockey"]
NO_TOOL_REQUESTS = [
    "Write a short haiku about autumn leaves.",
    "Can you tell me a joke about penguins?",
    "What does the word 'serendipity' mean?",
    "Give me three tips for falling asleep faster.",
    "Translate 'good morning, friend' into a pirate accent, just for fun.",
    "Who painted the Mona Lisa?",
    "Suggest a name for my new houseplant.",
    "Explain in one paragraph why the sky looks blue.",
    "Write a limerick about a forgetful robot.",
    "What is a good way to start learning to juggle?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Recommend a board game for a family of four.",
    "Compose a two-line poem about coffee.",
    "What's the difference between a violin and a viola?",
    "Give me a motivational quote to start my week.",
    "How do I fold a paper crane?",
]


#: Every list of strings above, in name order: label-noise injection (``shared/noise.py``) swaps a
#: value for another member of the first list that holds it, so this order is part of its output.
VOCABULARIES: tuple[tuple[str, ...], ...] = tuple(
    tuple(v)
    for v in (
        AIRPORTS, ANIMALS, ARTISTS, CATEGORIES, CHEM, COLORS, COMPANIES, COUNTRIES, COUNTRY_CODES, CUISINES,
        CURRENCIES, DEVICES, DOMAINS, FIRST_NAMES, FOODS, GENRES, INSTRUMENTS, LANGUAGES, LANGUAGE_CODES,
        LAST_NAMES, NO_TOOL_REQUESTS, SENTENCES, SHAPES, SPECIES, SPORTS, SPORTS_TEAMS, STATUSES, STREETS,
        STYLES, TICKERS, TITLES, TOPICS, UNITS_GENERIC, UNITS_LENGTH, UNITS_TEMP, UNITS_WEIGHT, WORDS, WORLD_CITIES,
    )
)


def tokens(name: str) -> list[str]:
    """Parameter name → lowercase words (snake_case, camelCase, dots, dashes)."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [t for t in re.split(r"[^A-Za-z0-9]+", name.lower()) if t]


def humanize(name: str) -> str:
    """``number_of_tickets`` → ``number of tickets``; ``perPage`` → ``per page``; ``_from`` → ``from``."""
    words = tokens(name)
    return " ".join(words) if words else name

