"""The one YAML loader for keygate's shipped files (envoy/, deploy/) and the tests: PyYAML's
safe loader, except that a mapping with the same key twice is an error. YAML itself keeps
the last value, and so does Envoy: a second `clusters:` silently replaces the first, so a
file can look right and run something else."""

from pathlib import Path

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class StrictLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a repeated key."""


def _construct_mapping(loader, node, deep=False):
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, _ in node.value:
            # `<<: *anchor` merges may be overridden by the mapping's own keys: YAML allows
            # that on purpose, so merge keys are not compared.
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable (complex) key: SafeLoader refuses it below
                continue
            if first is not None:
                raise DuplicateKeyError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first at line {first.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load(text):
    """One YAML document (str, bytes or a Path), refusing duplicate keys."""
    if isinstance(text, Path):
        text = text.read_text()
    return yaml.load(text, Loader=StrictLoader)


def load_all(text):
    """Every document of a multi-document YAML stream, refusing duplicate keys."""
    if isinstance(text, Path):
        text = text.read_text()
    return list(yaml.load_all(text, Loader=StrictLoader))
