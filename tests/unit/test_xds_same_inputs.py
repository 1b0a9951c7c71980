"""``Builder.same_inputs`` is what lets the cache skip rebuilding a proxy: it
must never say "same" when the snapshot would differ."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.xds.builder import Builder
from controlplane.xds.intentions import Ranked
from controlplane.xds.mesh import MeshView
from tests.unit.test_xds_builder import catalogs, gateways, keys, proxies, services


@st.composite
def changed(draw: st.DrawFn, view: MeshView) -> MeshView:
    """*view* with one thing changed, as one store event would change it."""
    what = draw(st.sampled_from(["service", "drop-service", "gateway", "intentions",
                                 "default", "version"]))
    if what == "service":
        key = draw(st.sampled_from(sorted(view.services)) if view.services else keys)
        return replace(view, services={**view.services, key: draw(services(key))})
    if what == "drop-service" and view.services:
        gone = draw(st.sampled_from(sorted(view.services)))
        return replace(view, services={k: v for k, v in view.services.items() if k != gone})
    if what == "gateway":
        key = draw(st.sampled_from(sorted(view.gateways)) if view.gateways else keys)
        return replace(view, gateways={**view.gateways, key: draw(gateways(key))})
    if what == "intentions":
        return replace(view, intentions=(*view.intentions, Ranked(
            key="Intention default/new", source=("*", "*"), destination=draw(keys),
            action="deny", rules=(), precedence=1)))
    if what == "default":
        return replace(view, default_intention="deny" if view.default_intention == "allow"
                       else "allow")
    return replace(view, version=view.version + 1)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), before=catalogs())
def test_same_inputs_implies_an_equal_snapshot(data: st.DataObject, before: MeshView) -> None:
    before = replace(before, mtls_domain=data.draw(st.sampled_from(["", "mesh.test"])))
    after = data.draw(changed(before))
    for _ in range(3):
        proxy = data.draw(proxies(before))
        if Builder(after).same_inputs(proxy, before):
            assert Builder(after).build(proxy).same_as(Builder(before).build(proxy)), proxy
