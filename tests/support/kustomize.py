"""A small kustomize for the tests: renders ``deploy/kubernetes`` without kubectl or kustomize.

It implements only what the manifests use, and refuses anything else (an unknown field of a
kustomization, a patch form, an op) rather than render it wrongly:

* ``resources``: YAML files (one or more documents) and directories holding a kustomization;
* ``components``: directories whose kustomization is ``kind: Component``, applied after the
  resources, in order (their own resources are added, their patches and images applied to all);
* ``images``: ``name`` with ``newName`` / ``newTag`` / ``digest``, applied to every ``image`` of
  a ``containers`` or ``initContainers`` list, wherever it is in an object;
* ``patches``: ``path`` to a JSON6902 operation list (add, remove, replace, test) with a
  ``target`` of ``kind`` and ``name`` (and optionally ``namespace``); a target must match at
  least one object.

No generators, labels, name prefixes, namespaces, strategic-merge patches, vars or
replacements: whoever needs one adds it here, with a test, or the kubectl cross-check in
tests/test_k8s.py (which runs when kubectl is installed) tells the two apart.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "images", "patches"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}
TARGET_KEYS = {"kind", "name", "namespace"}
OPS = {"add", "remove", "replace", "test"}

Object = dict[str, Any]


class KustomizeError(ValueError):
    """A kustomization this renderer cannot build (or kustomize would refuse)."""


def render(directory: Path) -> list[Object]:
    """The objects ``kustomize build DIRECTORY`` would print, in resource order."""
    return _build(Path(directory), component=False)


def _kustomization(directory: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            unknown = set(data) - KUSTOMIZATION_KEYS
            if unknown:
                raise KustomizeError(f"{path}: fields this renderer lacks: {sorted(unknown)}")
            return dict(data)
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def _build(directory: Path, component: bool) -> list[Object]:
    spec = _kustomization(directory)
    kind = spec.get("kind", "Kustomization")
    if (kind == "Component") != component:
        raise KustomizeError(
            f"{directory}: a {kind} used as a {'component' if component else 'resource'}"
        )
    objects: list[Object] = []
    for entry in spec.get("resources") or []:
        objects.extend(_resource(directory / entry))
    for entry in spec.get("components") or []:
        objects = _apply(directory / entry, objects)
    _transform(directory, spec, objects)
    _check_unique(directory, objects)
    return objects


def _resource(path: Path) -> list[Object]:
    if path.is_dir():
        return _build(path, component=False)
    if not path.is_file():
        raise KustomizeError(f"no such resource: {path}")
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in documents:
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= set(doc):
            raise KustomizeError(f"{path}: not a Kubernetes object")
    return documents


def _apply(directory: Path, objects: list[Object]) -> list[Object]:
    """A component on top of ``objects``: its resources added, its transformations on all."""
    spec = _kustomization(directory)
    if spec.get("kind") != "Component":
        raise KustomizeError(f"{directory}: components must be kind: Component")
    combined = list(objects)
    for entry in spec.get("resources") or []:
        combined.extend(_resource(directory / entry))
    for entry in spec.get("components") or []:
        combined = _apply(directory / entry, combined)
    _transform(directory, spec, combined)
    return combined


def _transform(directory: Path, spec: dict[str, Any], objects: list[Object]) -> None:
    for patch in spec.get("patches") or []:
        _patch(directory, patch, objects)
    for image in spec.get("images") or []:
        unknown = set(image) - IMAGE_KEYS
        if unknown or "name" not in image:
            raise KustomizeError(f"{directory}: image entry {image}: unsupported fields")
        for obj in objects:
            _set_images(obj, image)


def _patch(directory: Path, patch: dict[str, Any], objects: list[Object]) -> None:
    if set(patch) != {"path", "target"}:
        raise KustomizeError(f"{directory}: only `path` + `target` patches: {patch}")
    target = patch["target"]
    if set(target) - TARGET_KEYS or not {"kind", "name"} <= set(target):
        raise KustomizeError(f"{directory}: a target is kind and name (and namespace): {target}")
    ops = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(ops, list):
        raise KustomizeError(f"{directory / patch['path']}: not a JSON6902 operation list")
    matched = [
        obj
        for obj in objects
        if obj["kind"] == target["kind"]
        and obj["metadata"]["name"] == target["name"]
        and obj["metadata"].get("namespace")
        == target.get("namespace", obj["metadata"].get("namespace"))
    ]
    if not matched:
        raise KustomizeError(f"{directory}: patch {patch['path']} matches no object: {target}")
    for obj in matched:
        for op in ops:
            apply_operation(obj, op)


def apply_operation(document: Object, op: dict[str, Any]) -> None:
    """One JSON6902 (RFC 6902) operation, in place: add, remove, replace or test."""
    name = op.get("op")
    if name not in OPS or "path" not in op:
        raise KustomizeError(f"unsupported JSON6902 operation: {op}")
    parent, key = _locate(document, op["path"])
    if name == "add":
        value = copy.deepcopy(op["value"])
        if isinstance(parent, list):
            index = len(parent) if key == "-" else _index(parent, key, insert=True)
            parent.insert(index, value)
        else:
            parent[key] = value
    elif name == "remove":
        if isinstance(parent, list):
            del parent[_index(parent, key)]
        elif key in parent:
            del parent[key]
        else:
            raise KustomizeError(f"remove: no {op['path']}")
    elif name == "replace":
        if isinstance(parent, list):
            parent[_index(parent, key)] = copy.deepcopy(op["value"])
        elif key in parent:
            parent[key] = copy.deepcopy(op["value"])
        else:
            raise KustomizeError(f"replace: no {op['path']}")
    else:  # test
        current = parent[_index(parent, key)] if isinstance(parent, list) else parent.get(key)
        if current != op["value"]:
            raise KustomizeError(f"test failed at {op['path']}: {current!r} != {op['value']!r}")


def _locate(document: Object, pointer: str) -> tuple[Any, str]:
    if not pointer.startswith("/"):
        raise KustomizeError(f"not a JSON pointer: {pointer!r}")
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
    node: Any = document
    for token in tokens[:-1]:
        if isinstance(node, list):
            node = node[_index(node, token)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            raise KustomizeError(f"{pointer}: no {token!r} on the way")
    return node, tokens[-1]


def _index(items: list[Any], token: str, insert: bool = False) -> int:
    if not token.isdigit() or int(token) > len(items) - (0 if insert else 1):
        raise KustomizeError(f"list index {token!r} out of range ({len(items)} items)")
    return int(token)


def _set_images(node: Any, image: dict[str, str]) -> None:
    if isinstance(node, list):
        for item in node:
            _set_images(item, image)
        return
    if not isinstance(node, dict):
        return
    for field in ("containers", "initContainers"):
        for container in node.get(field) or []:
            if isinstance(container, dict) and "image" in container:
                container["image"] = _retag(container["image"], image)
    for key, value in node.items():
        if key not in ("containers", "initContainers"):
            _set_images(value, image)


def _retag(reference: str, image: dict[str, str]) -> str:
    name, digest = reference.partition("@")[::2]
    tag = ""
    slash = name.rfind("/")
    if name.rfind(":") > slash:
        name, tag = name.rsplit(":", 1)
    if name != image["name"]:
        return reference
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _check_unique(directory: Path, objects: list[Object]) -> None:
    seen: set[tuple[str, str, str | None]] = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))
        if key in seen:
            raise KustomizeError(f"{directory}: {key} defined twice")
        seen.add(key)
