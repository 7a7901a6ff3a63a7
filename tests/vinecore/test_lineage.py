"""The lineage state (vinecore/engines/_lineage.py), fed facts only: no engine, no cluster."""

from vinecore.engines._lineage import Copy, Drop, Fail, Lineage, Recompute, Start


def _kinds(actions):
    return [type(a).__name__ for a in actions]


def test_a_released_temp_is_dropped_and_forgotten():
    lin = Lineage()
    assert lin.produced(("p1",), "A", "spec-p1") == []  # no temp inputs: nothing to copy
    assert lin.holders("p1") == ("A",)
    assert lin.consume("c", ("p1",)) == [Start("c", {"p1": ("A",)})]
    assert lin.release("p1") == []  # pinned by the running consumer
    assert lin.consumed("c") == [Drop("p1", ("A",))]
    assert lin.sizes() == {"temps": 0, "recipes": 0, "consumers": 0}


def test_unknown_input_fails_the_consumer():
    lin = Lineage()
    [fail] = lin.consume("c", ("nope",))
    assert isinstance(fail, Fail) and "nope" in fail.why and "released" in fail.why


def test_a_lost_temp_is_recomputed_before_its_consumer_starts():
    lin = Lineage()
    lin.produced(("p1",), "A", "spec-p1")
    [rec] = lin.worker_lost("A")
    assert isinstance(rec, Recompute) and rec.recipe == "spec-p1" and rec.inputs == {}
    assert lin.consume("c", ("p1",)) == []  # parked until the recomputation is done
    assert lin.recomputed(rec.rid, "B") == [Start("c", {"p1": ("B",)})]
    assert lin.worker_lost("A") == []


def test_derived_temps_are_copied_and_then_need_no_lineage():
    lin = Lineage(replicas=2)
    lin.produced(("p1",), "A", "spec-p1")
    lin.produced(("p2",), "B", "spec-p2")
    assert lin.consume("acc", ("p1", "p2")) == [Start("acc", {"p1": ("A",), "p2": ("B",)})]
    assert lin.produced(("a",), "A", "spec-a", ("p1", "p2")) == [Copy("a", ("A",))]
    lin.consumed("acc")
    assert sorted(lin.release("p1") + lin.release("p2"), key=repr) == [Drop("p1", ("A",)), Drop("p2", ("B",))]
    assert lin.sizes()["recipes"] == 3  # p1 and p2 stay recipes of a until a is copied
    assert lin.copied("a", "C") == []
    assert lin.holders("a") == ("A", "C")
    assert lin.sizes() == {"temps": 1, "recipes": 0, "consumers": 0}
    assert lin.worker_lost("A") == [Copy("a", ("C",))]  # the copy on C serves, and is copied again
    assert lin.consume("final", ("a",)) == [Start("final", {"a": ("C",)})]


def test_a_derived_temp_keeps_its_number_of_copies_through_successive_losses():
    lin = Lineage(replicas=2)
    lin.produced(("p1",), "A", "spec-p1")
    lin.consume("acc", ("p1",))
    lin.produced(("a",), "A", "spec-a", ("p1",))
    lin.consumed("acc")
    lin.release("p1")
    lin.copied("a", "B")
    assert lin.sizes()["recipes"] == 0
    assert lin.worker_lost("A") == [Copy("a", ("B",))]
    assert lin.copy_failed("a") == []  # nowhere to copy to yet
    assert lin.joined("C") == [Copy("a", ("B",))]
    assert lin.copied("a", "C") == []
    assert lin.worker_lost("B") == [Copy("a", ("C",))]  # B's loss costs nothing: C holds it
    assert lin.consume("final", ("a",)) == [Start("final", {"a": ("C",)})]
    lin.consumed("final")
    assert lin.release("a") == [Drop("a", ("C",))]
    assert lin.worker_lost("C") == []  # released: nothing to keep


def test_a_lost_derived_temp_is_rebuilt_from_its_inputs_recipes():
    lin = Lineage(replicas=2)
    lin.produced(("p1",), "A", "spec-p1")
    lin.produced(("p2",), "A", "spec-p2")
    lin.consume("acc", ("p1", "p2"))
    lin.produced(("a",), "A", "spec-a", ("p1", "p2"))
    lin.consumed("acc")
    lin.release("p1")
    lin.release("p2")
    recs = lin.worker_lost("A")  # before the copy of a was made
    assert sorted(r.recipe for r in recs) == ["spec-p1", "spec-p2"]
    assert lin.copy_failed("a") == []
    first = lin.recomputed(recs[0].rid, "B")
    assert first == []  # a waits for both inputs
    [rec_a] = lin.recomputed(recs[1].rid, "B")
    assert rec_a.recipe == "spec-a" and rec_a.inputs == {"p1": ("B",), "p2": ("B",)}
    after = lin.recomputed(rec_a.rid, "C")
    assert Copy("a", ("C",)) in after
    assert sorted((a for a in after if isinstance(a, Drop)), key=repr) == [Drop("p1", ("B",)), Drop("p2", ("B",))]
    assert lin.holders("a") == ("C",)


def test_a_temp_whose_every_copy_is_gone_fails_its_consumers():
    lin = Lineage(replicas=2)
    lin.produced(("p1",), "A", "spec-p1")
    lin.consume("acc", ("p1",))
    lin.produced(("a",), "A", "spec-a", ("p1",))
    lin.consumed("acc")
    lin.release("p1")
    lin.copied("a", "B")
    lin.worker_lost("A")
    [fail] = lin.worker_lost("B") + lin.consume("c", ("a",))
    assert isinstance(fail, Fail) and "cannot be made again" in fail.why


def test_a_parked_consumer_fails_when_recomputation_fails():
    lin = Lineage()
    lin.produced(("p1",), "A", "spec-p1")
    [rec] = lin.worker_lost("A")
    lin.consume("c", ("p1",))
    [again] = lin.recompute_failed(rec.rid, "worker B lost", worker_lost=True)
    assert isinstance(again, Recompute) and again.rid == rec.rid
    [fail] = lin.recompute_failed(rec.rid, "ValueError: bad", worker_lost=False)
    assert fail.key == "c" and "ValueError: bad" in fail.why


def test_unneeded_lost_temps_are_not_recomputed():
    lin = Lineage()
    lin.produced(("p1",), "A", "spec-p1")
    lin.release("p1")
    assert lin.worker_lost("A") == []
    assert lin.sizes()["temps"] == 0


def test_a_single_worker_gets_its_copy_when_another_joins():
    lin = Lineage(replicas=2)
    lin.produced(("p1",), "A", "spec-p1")
    lin.consume("acc", ("p1",))
    [copy] = lin.produced(("a",), "A", "spec-a", ("p1",))
    assert lin.copy_failed("a") == []  # no second worker yet
    assert lin.joined("B") == [Copy("a", ("A",))]
    assert lin.joined("C") == []


def test_replicas_one_keeps_the_whole_lineage():
    lin = Lineage(replicas=1)
    lin.produced(("p1",), "A", "spec-p1")
    lin.consume("acc", ("p1",))
    assert lin.produced(("a",), "A", "spec-a", ("p1",)) == []
    lin.consumed("acc")
    lin.release("p1")
    assert lin.sizes()["recipes"] == 2
    lin.release("a")
    assert lin.sizes() == {"temps": 0, "recipes": 0, "consumers": 0}
