from openmedreason.taxonomy import BY_KEY, CATEGORIES, FAMILIES, category


def test_taxonomy_matches_the_method():
    assert len(CATEGORIES) == 19 and len(BY_KEY) == 19
    assert sum(c.published for c in CATEGORIES) == 194_270
    per_family = {f: sum(c.published for c in CATEGORIES if c.family == f) for f in FAMILIES}
    assert per_family == {"Perception": 113_784, "Diagnosis": 51_974, "Management": 12_162, "Risk": 11_379, "Workup": 4_971}
    assert category("Diagnosis").styles == ("short", "long")
    assert category("normal_abnormal").binary == "always"
    assert category("Next-step diagnostic test or imaging").family == "Workup"
