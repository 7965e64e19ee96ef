from soft_lightning.rounds.filters import FilterSettings, drop_reason
from soft_lightning.rounds.icl import Example
from soft_lightning.rounds.phases import filter_records

EXAMPLE = ("To make a paper plane, fold a sheet of paper in half lengthwise, open it again, fold the top "
           "corners to the centre line, fold the new edges to the centre once more, then fold it in half "
           "and fold each wing down.")


def test_degenerate_responses_are_named():
    assert drop_reason("") == "empty"
    assert drop_reason("   \n") == "empty"
    assert drop_reason("k", FilterSettings(min_chars=2)) == "too_short"
    assert drop_reason("the cat sat on " * 20) == "repetitive"
    assert drop_reason("Water boils at 100 degrees Celsius at sea level.") is None
    varied = " ".join(f"word{i}" for i in range(80))
    assert drop_reason(varied) is None


def test_repeated_sentences_copied_examples_and_echoed_prompts_are_named():
    looped = "Paris is the capital of France. It has many museums. Paris is the capital of France. " * 2
    assert drop_reason(looped) == "repeats_sentences"
    assert drop_reason("It rains. Then it stops. After that the sun comes out.") is None

    copied = "Sure! " + EXAMPLE.replace("paper plane", "paper aeroplane")
    assert drop_reason(copied, prompt="How do I bake bread?", examples=[EXAMPLE]) == "copies_example"
    answer = ("Mix flour, water, salt and yeast, knead the dough for ten minutes, let it rise for an hour, "
              "shape it, let it rise again and bake it at 230 degrees for about thirty minutes.")
    assert drop_reason(answer, prompt="How do I bake bread?", examples=[EXAMPLE]) is None

    prompt = "Explain why the sky is blue during the day."
    assert drop_reason("Explain why the sky is blue during the day.", prompt=prompt) == "echoes_prompt"
    assert drop_reason("The sky is blue during the day because air molecules scatter short blue wavelengths "
                       "of sunlight far more than red ones.", prompt=prompt) is None


def test_a_share_of_zero_turns_a_check_off():
    off = FilterSettings(max_example_overlap=0, max_prompt_overlap=0, max_repeated_sentences=0)
    assert drop_reason(EXAMPLE, off, prompt=EXAMPLE, examples=[EXAMPLE]) is None
    assert drop_reason(EXAMPLE, prompt="Fold a plane?", examples=[EXAMPLE]) == "copies_example"


def test_filter_records_judges_each_record_by_the_examples_it_was_shown():
    pool = [Example("plane", "How do I fold a paper plane?", EXAMPLE), Example("other", "Hi?", "Hello there.")]
    records = [{"id": "a", "prompt": "Tell me a craft.", "response": EXAMPLE, "icl_ids": ["plane"]},
               {"id": "b", "prompt": "Tell me a craft.", "response": EXAMPLE, "icl_ids": ["other"]},
               {"id": "c", "prompt": "Say nothing.", "response": " ", "icl_ids": []}]
    for rec in records:
        rec["finish_reason"] = "stop"
    dropped = filter_records(records, FilterSettings(), pool)
    assert dropped == {"copies_example": 1, "empty": 1}
    assert [r["kept"] for r in records] == [False, True, False]
    assert records[0]["drop_reason"] == "copies_example" and "drop_reason" not in records[1]


def test_an_answer_cut_off_at_the_cap_never_reaches_training_as_finished(tiny_model):
    """Dropped as `truncated` by default; kept only on request, and then trained without the
    end-of-turn marker a finished answer gets."""
    from soft_lightning.models.encoding import Encoder

    cut = {"id": "cut", "prompt": "Tell me a craft.", "response": "Fold the paper in half, then", "icl_ids": [],
           "finish_reason": "length"}
    done = {**cut, "id": "done", "response": "Fold the paper in half.", "finish_reason": "stop"}
    records = [dict(cut), dict(done)]
    assert filter_records(records, FilterSettings(), []) == {"truncated": 1}
    assert [r["kept"] for r in records] == [False, True]

    records = [dict(cut), dict(done)]
    assert filter_records(records, FilterSettings(truncated="keep"), []) == {}
    encoder = Encoder.load(tiny_model)
    end = encoder.ids(encoder.format.training_pair("x", "y", finished=True)[1])[-1]
    cut_ids, done_ids = (encoder.encode_record(r) for r in records)
    assert done_ids.labels[-1] == end and end not in cut_ids.labels, "a cut-off answer must not learn to end"
