from soft_lightning.filters import drop_reason


def test_degenerate_responses_are_named():
    assert drop_reason("") == "empty"
    assert drop_reason("   \n") == "empty"
    assert drop_reason("k", min_chars=2) == "too_short"
    assert drop_reason("the cat sat on " * 20) == "repetitive"
    assert drop_reason("Water boils at 100 degrees Celsius at sea level.") is None
    varied = " ".join(f"word{i}" for i in range(80))
    assert drop_reason(varied) is None
