"""Routes: the one reader and writer of an entry model's routes JSON (served/routes.py)."""

from __future__ import annotations

import json

import pytest

from aitune_triton.served.routes import ROUTES_FILE, ROUTES_PARAMETER, Routes, RoutesError

GRAPH = {
    "model_name": "net.graph_0", "version": 2, "max_batch_size": 8, "constants": {"scale": "2.0"},
    "inputs": [{"name": "x", "dtype": "float32", "dims": [4]}], "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}],
    "served_names": {"x": "input_0"},
}
JSON = json.dumps({"module": "net", "signature": [{"name": "x"}], "strict": False, "graphs": [GRAPH]})


def test_routes_read_the_json_written_since_the_first_exports_and_write_it_back_byte_identical():
    routes = Routes.from_json(JSON)

    assert (routes.module, routes.signature, routes.strict) == ("net", [{"name": "x"}], False)
    (route,) = routes.graphs
    assert (route.model_name, route.version, route.max_batch_size, route.input_names) == ("net.graph_0", 2, 8, frozenset({"x"}))
    assert (route.served_names, route.constants, route.padding, dict(route.io)) == ({"x": "input_0"}, {"scale": "2.0"}, None, GRAPH)
    assert routes.to_json() == JSON
    assert routes.input_sets() == [frozenset({"x"})]
    bare = Routes.from_dict({"graphs": [GRAPH]})  # only what the router needs: the others take their defaults
    assert (bare.module, bare.signature, bare.strict, bare.graphs) == ("", [], True, routes.graphs)


def test_routes_read_from_a_version_file_first_else_from_the_configuration_parameter(tmp_path):
    config = {"parameters": {ROUTES_PARAMETER: {"string_value": JSON}}}
    newer = Routes.build("net", [], True, [{**GRAPH, "version": 3}])

    assert Routes.read(str(tmp_path), config).graphs[0].version == 2  # an older export: no routes.json
    (tmp_path / ROUTES_FILE).write_text(newer.to_json() + "\n")
    assert Routes.read(str(tmp_path), config) == newer
    assert Routes.from_config_json({"parameters": {}}) is None
    with pytest.raises(RoutesError, match="neither .*routes.json nor the 'aitune_triton.routes' configuration parameter"):
        Routes.read(str(tmp_path / "missing"), {})


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "routes: not JSON"),
        ("[]", "routes: expected a JSON object, got list"),
        ('{"graphs": {}}', "routes: 'graphs' is dict, expected a list of graph models"),
        ('{"graphs": [{"model_name": "m", "version": 1, "inputs": []}]}', r"routes: graphs\[0\] lacks \['outputs'\]"),
    ],
)
def test_malformed_routes_are_refused_naming_what_is_wrong(text, message):
    with pytest.raises(RoutesError, match=message):
        Routes.from_json(text)
