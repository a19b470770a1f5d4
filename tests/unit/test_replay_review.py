"""Retraining's split and review answers: doubtful answers always train; the random slice may test."""

from retrain.replay.select import Example, time_split, trains_only


def example(i: int, source: str | None = None, reason: str | None = None) -> Example:
    return Example(text=f"t{i}", clean_text=f"t{i}", label=f"l{i % 3}", timestamp_ms=1_000 + i, partition=0, offset=i,
                   source=source, reason=reason, sampling_weight=50.0 if reason and "random" in reason else None)


def test_doubtful_review_answers_train_even_when_they_are_the_newest():
    base = [example(i) for i in range(10)]
    reviews = [example(100 + i, "review", "margin") for i in range(5)] + [example(200, "review", "oos,shadow")]
    train, test = time_split(base + reviews, 0.2)
    assert all(e in train for e in reviews), "a review round right before retrain teaches the candidate"
    assert [e.offset for e in test] == [8, 9], "the newest fifth of the examples that may test"
    assert sorted(e.order for e in train + test) == sorted(e.order for e in base + reviews)


def test_random_slice_answers_and_plain_examples_may_test():
    assert not trains_only(example(1))
    assert not trains_only(example(2, "review", "random"))
    assert not trains_only(example(3, "review", "margin,random"))
    assert trains_only(example(4, "review", "margin"))
    newest = example(300, "review", "margin,random")
    _, test = time_split([example(i) for i in range(4)] + [newest], 0.2)
    assert test == [newest]


def test_a_window_of_doubtful_answers_only_has_no_test_slice():
    reviews = [example(i, "review", "margin") for i in range(5)]
    train, test = time_split(reviews, 0.2)
    assert test == [] and train == sorted(reviews, key=lambda e: e.order)
