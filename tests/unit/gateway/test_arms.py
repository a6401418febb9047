"""A/B arms in the gateway: every answer comes whole from the user's arm's version (scores and
catalog), is tagged with the arm in the response and the exposure log, and the pointer watcher
switches arms in and out in one step."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from feature_service.store import InMemoryStore
from features.experiment import LIVE_ARM, Arm, Experiment
from features.user_state import FeatureRules
from gateway import components
from gateway.exposure import exposure_record
from gateway.inventory import InMemoryInventory
from gateway.served_model import ServedArms, ServedModel
from gateway.service import RecommendationService
from tests.unit.gateway.fakes import FakePublisher, FakeRecommender
from tests.unit.gateway.test_exposure import RecordingExposures

EXPERIMENT = Experiment("e1", (Arm(LIVE_ARM, 3, 0.5), Arm("candidate", 4, 0.5)), 0)


class VersionRecorder(FakeRecommender):
    def __init__(self, catalog) -> None:
        super().__init__(catalog)
        self.versions: list[int | None] = []

    async def recommend(self, inputs, version=None):
        self.versions.append(version)
        return await super().recommend(inputs, version)

    async def similar(self, item_index, exclude, k, version=None):
        self.versions.append(version)
        return await super().similar(item_index, exclude, k, version)


def models(catalog) -> dict[int, ServedModel]:
    return {v: ServedModel(version=v, catalog=catalog, popular_items=["a"], sequence_length=4)
            for v in (3, 4)}


def service(catalog, users) -> tuple[RecommendationService, VersionRecorder, RecordingExposures]:
    store = InMemoryStore(FeatureRules(history_items=10))
    store.load_snapshot({u: ["a", "b"] for u in users})
    recommender, exposures = VersionRecorder(catalog), RecordingExposures()
    svc = RecommendationService(models(catalog)[3], store, recommender, FakePublisher(), InMemoryInventory(),
                                exposures=exposures)
    return svc, recommender, exposures


def test_each_user_is_answered_by_their_arm_and_the_arm_is_logged(catalog):
    users = [f"u{i}" for i in range(40)]
    svc, recommender, exposures = service(catalog, users)
    svc.reload(models(catalog)[3], ServedArms.build(EXPERIMENT, models(catalog)))

    async def all_users():
        return [await svc.recommend(u, 2) for u in users]

    answers = asyncio.run(all_users())
    expected = [EXPERIMENT.arm_for(u) for u in users]
    assert {a.name for a in expected} == {"live", "candidate"}  # both arms take part
    assert [(r.arm, r.model_version) for r in answers] == [(a.name, a.version) for a in expected]
    assert recommender.versions == [a.version for a in expected]
    assert [exposure_record(r, s, 0)["arm"] for r, s in exposures.records] == [a.name for a in expected]


def test_similar_items_follow_the_users_arm_and_anonymous_visitors_the_live_version(catalog):
    svc, recommender, exposures = service(catalog, [])
    svc.reload(models(catalog)[3], ServedArms.build(EXPERIMENT, models(catalog)))
    user = next(f"u{i}" for i in range(100) if EXPERIMENT.arm_for(f"u{i}").name == "candidate")
    with_user = asyncio.run(svc.similar("a", 2, user_id=user))
    anonymous = asyncio.run(svc.similar("a", 2))
    assert (with_user.arm, with_user.model_version) == ("candidate", 4)
    assert (anonymous.arm, anonymous.model_version) == (None, 3)
    assert recommender.versions == [4, 3]


class ReadyTriton:
    def __init__(self, ready: set[int]) -> None:
        self.ready = ready

    async def version_ready(self, version: int) -> bool:
        return version in self.ready


def test_the_watcher_switches_arms_in_only_once_triton_serves_every_version_and_out_again(
        catalog, tmp_path, monkeypatch):
    svc, _, _ = service(catalog, [])
    loaded: list[int] = []

    def load(repository, version):
        loaded.append(version)
        return models(catalog)[version]

    monkeypatch.setattr(components, "load_served_model", load)
    pointer = tmp_path / "rollout.json"
    pointer.write_text(json.dumps({"live": 3, "experiment": EXPERIMENT.to_dict()}))
    triton = ReadyTriton({3})
    asyncio.run(components._follow_pointer(svc, triton, tmp_path))
    assert svc.arms is None  # version 4 not ready: nobody is moved to it yet
    triton.ready.add(4)
    asyncio.run(components._follow_pointer(svc, triton, tmp_path))
    assert svc.arms is not None and svc.arms.experiment == EXPERIMENT and svc.served.arm is None
    assert {n: m.version for n, m in svc.arms.by_arm.items()} == {"live": 3, "candidate": 4}
    assert loaded == [4]  # the live version already served is not read again

    pointer.write_text(json.dumps({"live": 4, "previous": 3, "experiment": None}))  # ab stop --promote
    asyncio.run(components._follow_pointer(svc, triton, tmp_path))
    assert svc.arms is None and svc.served.version == 4 and svc.served.arm is None
    assert dataclasses.replace(svc.served, arm=None) == models(catalog)[4]


def test_an_admin_reload_keeps_the_arms_while_the_live_version_stays(catalog, monkeypatch):
    from gateway.routes import admin
    from tests.unit.gateway.test_api import TOKEN, make_parts

    parts = make_parts(catalog, admin_token=TOKEN)
    arms = ServedArms.build(EXPERIMENT, models(catalog))
    parts.service.reload(models(catalog)[3], arms)
    live = {"version": 3}
    monkeypatch.setattr(admin, "load_served_model", lambda repository: models(catalog)[live["version"]])
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert parts.client.post("/v1/admin/reload", headers=headers).status_code == 200
    assert parts.service.arms is arms
    live["version"] = 4  # promoted meanwhile: the old arms are not kept with the new live version
    assert parts.client.post("/v1/admin/reload", headers=headers).status_code == 200
    assert parts.service.arms is None and parts.service.served.version == 4
