"""Route logic without etcd: choosing a version, parsing splits, checking a new route."""

from __future__ import annotations

import collections

import pytest

from meshserve.errors import InvalidArgument, NotFound
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry.cache import ModelView, Replica
from meshserve.routes import check_route, check_split, parse_split, remove_alias, set_alias, set_policy
from meshserve.services.router import routes

REPLICA = (Replica("rt", "python", "127.0.0.1:1", ""),)
VIEW = ModelView("m", {"1": REPLICA, "2": REPLICA}, ("1", "2", "3"), "2")


def route(**fields: object) -> pb.Route:
    return pb.Route(model="m", **fields)  # type: ignore[arg-type]


def test_explicit_versions_win_over_aliases() -> None:
    r = route(aliases={"stable": "1", "2": "1"})
    assert routes.choose(r, VIEW, "stable", ()) == "1"
    assert routes.choose(r, VIEW, "2", ()) == "2"
    assert routes.choose(r, VIEW, "nosuch", ()) == "nosuch"
    assert routes.choose(r, VIEW, "", ()) == ""  # no policy: the latest ready version


def test_pinned_default_through_an_alias() -> None:
    assert routes.choose(route(aliases={"stable": "1"}, default_version="stable"), VIEW, "", ()) == "1"


def test_split_draws_by_weight_and_skips_sides_not_ready() -> None:
    r = route(splits=[pb.Split(version="1", weight=80), pb.Split(version="2", weight=20)])
    counts = collections.Counter(routes.choose(r, VIEW, "", ()) for _ in range(4000))
    assert 0.75 < counts["1"] / 4000 < 0.85
    r = route(splits=[pb.Split(version="3", weight=90), pb.Split(version="2", weight=10)])
    assert {routes.choose(r, VIEW, "", ()) for _ in range(50)} == {"2"}  # 3 is not ready


def test_sticky_header_is_stable_per_value() -> None:
    r = route(splits=[pb.Split(version="1", weight=50), pb.Split(version="2", weight=50)], sticky_header="x-user")
    for user in ("a", "b", "c"):
        assert len({routes.choose(r, VIEW, "", (("x-user", user),)) for _ in range(20)}) == 1


def test_parse_split() -> None:
    assert parse_split("1=90, 2=10") == [("1", 90), ("2", 10)]
    for bad, words in (("1=90,2=20", "sum to 110"), ("1:90", "VERSION=WEIGHT"), ("1=50,1=50", "twice"),
                       ("../x=100", "invalid model version")):
        with pytest.raises(InvalidArgument, match=words):
            parse_split(bad)


def test_the_router_checks_changes_as_it_receives_them() -> None:
    """What a client sends is checked again: splits, names, sticky assignment, aliases."""
    assert check_split([("1", 90), ("2", 10)]) == [("1", 90), ("2", 10)]
    for sides, words in (([("1", 60), ("2", 30)], "sum to 90"), ([("1", 50), ("1", 50)], "twice"),
                         ([("", 100)], "needs a version"), ([("a/b", 100)], "invalid model version")):
        with pytest.raises(InvalidArgument, match=words):
            check_split(sides)
    for args, words in (
        (("", [("1", 60), ("2", 30)], "", []), "sum to 90"),
        (("2", [], "x-user", []), "only makes sense with a split"),
        (("2", [("1", 100)], "", []), "either a default version or a split"),
        (("", [], "", [""]), "a shadow needs a version"),
        (("../1", [], "", []), "invalid model version"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            set_policy(*args)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="needs a name and a version"):
        set_alias("stable", "")
    r = route(aliases={"stable": "1"}, default_version="stable", shadows=["2"])
    set_policy("", [("1", 50), ("2", 50)], "", [], sticky_principal=True)(r)
    assert (dict(r.aliases), r.default_version, list(r.shadows), r.sticky_principal) == ({"stable": "1"}, "", [],
                                                                                         True)
    remove_alias("stable")(r)
    with pytest.raises(NotFound, match="has no alias 'stable'; aliases: none"):
        remove_alias("stable")(r)


def test_check_route_only_checks_what_changes() -> None:
    placements = [pb.Placement(model="m", version="1", state=pb.MODEL_STATE_READY),
                  pb.Placement(model="m", version="2", state=pb.MODEL_STATE_FAILED)]
    assert check_route(route(aliases={"stable": "1"}), placements) == []
    assert "version 2 is not ready" in check_route(route(aliases={"canary": "2"}), placements)[0]
    assert "no such version" in check_route(route(shadows=["9"]), placements)[0]
    assert "is also a version" in check_route(route(aliases={"1": "1"}), placements)[0]
    old = route(aliases={"canary": "2"})
    assert check_route(route(aliases={"canary": "2", "stable": "1"}), placements, old) == []


def test_sticky_principal_is_stable_per_principal_and_random_without_one() -> None:
    r = route(splits=[pb.Split(version="1", weight=50), pb.Split(version="2", weight=50)], sticky_principal=True)
    for user in ("alice", "bob", "carol"):
        assert len({routes.choose(r, VIEW, "", (), user) for _ in range(20)}) == 1
    assert {routes.choose(r, VIEW, "", (), "") for _ in range(100)} == {"1", "2"}
