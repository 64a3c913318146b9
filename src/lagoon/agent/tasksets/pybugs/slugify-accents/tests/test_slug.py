from textkit.slug import slugify


def test_basic():
    assert slugify("Hello World") == "hello-world"


def test_punctuation_separates_words():
    assert slugify("Hello, World! 2024") == "hello-world-2024"


def test_custom_separator():
    assert slugify("a b c", separator="_") == "a_b_c"


def test_accents_are_transliterated():
    assert slugify("Café au lait") == "cafe-au-lait"


def test_many_accents():
    assert slugify("Crème Brûlée, naïve façade") == "creme-brulee-naive-facade"
