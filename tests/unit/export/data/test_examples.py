import numpy as np

from export.data.examples import build_examples
from features.behaviour import Step, type_code
from features.catalog import Item, ItemCatalog


def catalog(n=8):
    return ItemCatalog.from_items([Item(str(i), str(i)) for i in range(n)])


SHOP = {"u": [Step("1", "view"), Step("1", "cart"), Step("2", "view"), Step("1", "purchase"),
              Step("3", "view"), Step("3", "purchase"), Step("2", "purchase")]}


def test_targets_are_new_items_and_the_history_keeps_repeats_with_their_types():
    cat = catalog()
    histories, targets = build_examples(SHOP, cat, 4)
    assert targets.tolist() == [cat.index_of("2"), cat.index_of("3")]
    # the row for "3": the last four steps before it, items then type codes, left-padded
    items, types = histories[1, :4], histories[1, 4:]
    assert items.tolist() == cat.indices_of(["1", "1", "2", "1"]).tolist()
    assert types.tolist() == [type_code(t) for t in ("view", "cart", "view", "purchase")]
    first_items, first_types = histories[0, :4], histories[0, 4:]
    assert first_items.tolist() == [0, 0, cat.index_of("1"), cat.index_of("1")]
    assert first_types.tolist() == [0, 0, type_code("view"), type_code("cart")]


def test_a_log_whose_times_are_all_equal_gives_each_target_the_last_steps_of_the_others():
    cat = catalog()
    steps = [Step(str(i), "view", 0) for i in range(6)]
    histories, targets = build_examples({"u": steps}, cat, 3)
    ix = cat.index_of
    assert targets.tolist() == cat.indices_of([str(i) for i in range(1, 6)]).tolist()
    assert histories[1, :3].tolist() == cat.indices_of(["3", "4", "5"]).tolist()  # target "2"
    assert histories[4, :3].tolist() == [ix("2"), ix("3"), ix("4")]  # target "5": the prefix


def test_whole_history_adds_a_row_per_target_from_all_the_users_other_steps():
    cat = catalog()
    plain_histories, plain_targets = build_examples(SHOP, cat, 4)
    histories, targets = build_examples(SHOP, cat, 4, whole_history=True)
    ix = cat.index_of
    # "1" (the first step: no plain row), then "2" and "3", each plain row then whole-history row
    assert targets.tolist() == [ix("1"), ix("2"), ix("2"), ix("3"), ix("3")]
    np.testing.assert_array_equal(histories[[1, 3]], plain_histories)
    np.testing.assert_array_equal(targets[[1, 3]], plain_targets)
    # the last four steps of other items, later ones included, with their own types
    assert histories[2, :4].tolist() == cat.indices_of(["1", "1", "3", "3"]).tolist()
    assert histories[2, 4:].tolist() == [type_code(t) for t in ("cart", "purchase", "view", "purchase")]
    assert histories[4, :4].tolist() == cat.indices_of(["1", "2", "1", "2"]).tolist()
    assert histories[0, :4].tolist() == cat.indices_of(["2", "3", "3", "2"]).tolist()
    # a user with one item has nothing to predict it from
    assert len(build_examples({"v": [Step("1", "view"), Step("1", "cart")]}, cat, 4,
                              whole_history=True)[1]) == 0


def test_purchase_targets_are_first_purchases_of_seen_items_too():
    cat = catalog()
    _, targets = build_examples(SHOP, cat, 4, target="purchase")
    assert targets.tolist() == cat.indices_of(["1", "3", "2"]).tolist()


def test_a_target_sees_the_other_steps_of_its_moment_but_not_its_own_or_later_ones():
    cat = catalog()
    # one day's tags, logged with the day's timestamp: "1", "2", "3" in arbitrary file order,
    # then a repeat of "2" at the same moment and "4" a day later
    day, later = 86_400_000, 2 * 86_400_000
    steps = [Step("0", "view", 0), Step("1", "view", day), Step("2", "view", day),
             Step("3", "view", day), Step("2", "cart", day), Step("4", "view", later)]
    histories, targets = build_examples({"u": steps}, cat, 4)
    rows = {int(t): (h[:4].tolist(), h[4:].tolist()) for h, t in zip(histories, targets, strict=True)}
    ix = cat.index_of
    assert list(rows) == [ix("1"), ix("2"), ix("3"), ix("4")]
    # "2" sees "0", "1" and "3" (its moment), but not its own later cart
    assert rows[ix("2")][0] == [0, ix("0"), ix("1"), ix("3")]
    assert rows[ix("1")][0] == [ix("0"), ix("2"), ix("3"), ix("2")]
    assert rows[ix("1")][1][-1] == type_code("cart")
    # nothing from a later moment; the last four steps, as served
    assert rows[ix("4")][0] == [ix("1"), ix("2"), ix("3"), ix("2")]
    # without times every step is its own moment: the plain prefix
    plain = [Step(str(s), s.event_type) for s in steps]
    plain_histories, _ = build_examples({"u": plain}, cat, 4)
    assert plain_histories[1, :4].tolist() == [0, 0, ix("0"), ix("1")]
