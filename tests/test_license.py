import pytest

from openmedreason.ingest.license import DEFAULT_DENIED, normalize_license, parse_allow


@pytest.mark.parametrize(
    "url,text,type_,code",
    [
        ("http://creativecommons.org/licenses/by/2.0", None, None, "cc-by"),
        ("https://creativecommons.org/licenses/by-sa/4.0/", None, None, "cc-by-sa"),
        ("https://creativecommons.org/licenses/by-nc/4.0/", None, None, "cc-by-nc"),
        ("https://creativecommons.org/licenses/by-nc-nd/3.0/", None, None, "cc-by-nc-nd"),
        ("http://creativecommons.org/licenses/by-nd/4.0", None, None, "cc-by-nd"),
        ("https://creativecommons.org/publicdomain/zero/1.0/", None, None, "cc0"),
        ("http://creativecommons.org/publicdomain/mark/1.0/", None, None, "public-domain"),
        (None, "This is an open-access article distributed under the terms of the Creative Commons "
               "Attribution License, which permits unrestricted use", None, "cc-by"),
        (None, "Creative Commons Attribution-NonCommercial-NoDerivatives License", None, "cc-by-nc-nd"),
        (None, "CC BY-SA 3.0", None, "cc-by-sa"),
        (None, "CC0", None, "cc0"),
        (None, "Public domain", None, "public-domain"),
        (None, "All rights reserved.", None, "unknown"),
        (None, None, "open-access", "unknown"),
        (None, None, None, "unknown"),
    ],
)
def test_normalize(url, text, type_, code):
    assert normalize_license(url, text, type_) == code


def test_default_policy_and_allow():
    assert DEFAULT_DENIED == {"cc-by-nd", "cc-by-nc-nd", "unknown"}
    assert parse_allow("unknown, cc-by-nd") == {"unknown", "cc-by-nd"}
    assert "cc-by-nc-nd" in parse_allow("all")
    with pytest.raises(ValueError, match="unknown licence code"):
        parse_allow("cc-by-xx")
