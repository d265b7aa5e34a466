"""The extension's packaging: CMake metadata, the module's file lists, icons, the catalog entry.

These read the files as text (no Slicer build is needed), so a Python file added to the module or
to the engine cannot be forgotten in RADASegment/CMakeLists.txt, and the index entry cannot
drift away from the CMake metadata. Where ``cmake`` is on PATH, the module's CMakeLists.txt is
also configured against small stand-ins of Slicer's macros that check the same things Slicer's
do (every listed file exists, no unknown keyword).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TOP_CMAKE = ROOT / "CMakeLists.txt"
MODULE_DIR = ROOT / "RADASegment"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
ENGINE_DIR = ROOT / "RADALib"
CATALOG = ROOT / "Resources" / "ExtensionsIndex" / "RADA.json"
EXTENSION_FIELDS = (
    "HOMEPAGE",
    "CATEGORY",
    "CONTRIBUTORS",
    "DESCRIPTION",
    "ICONURL",
    "SCREENSHOTURLS",
    "DEPENDS",
)
# Properties of Slicer's catalog entry schema (Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json);
# the schema has additionalProperties: false and requires $schema, category and scm_url.
CATALOG_PROPERTIES = {
    "$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
    "build_subdirectory", "enabled", "tier",
}  # fmt: skip
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}


def strip_comments(text: str) -> str:
    """CMake text without ``#`` comments (a ``#`` inside a quoted string is kept)."""
    lines = []
    for line in text.splitlines():
        quoted = False
        for index, char in enumerate(line):
            if char == '"':
                quoted = not quoted
            elif char == "#" and not quoted:
                line = line[:index]
                break
        lines.append(line)
    return "\n".join(lines)


def commands(text: str, name: str) -> list[list[str]]:
    """The argument lists of every call of the CMake command ``name`` (case-insensitive)."""
    found = []
    for match in re.finditer(rf"(?i)\b{re.escape(name)}\s*\(([^)]*)\)", strip_comments(text)):
        found.append(re.findall(r'"[^"]*"|[^\s"]+', match.group(1)))
    return found


def unquote(token: str) -> str:
    return token[1:-1] if len(token) >= 2 and token[0] == token[-1] == '"' else token


def cmake_sets(text: str) -> dict[str, list[str]]:
    """``set(NAME values...)`` of a CMake file, values unquoted."""
    return {args[0]: [unquote(a) for a in args[1:]] for args in commands(text, "set") if args}


def keyword_values(args: list[str], keyword: str, keywords: set[str]) -> list[str]:
    """The values given after ``keyword`` in a call's arguments, up to the next keyword."""
    if keyword not in args:
        return []
    values = []
    for token in args[args.index(keyword) + 1 :]:
        if token in keywords:
            break
        values.append(unquote(token))
    return values


def extension_metadata() -> dict[str, str]:
    values = cmake_sets(TOP_CMAKE.read_text(encoding="utf-8"))
    return {field: " ".join(values.get(f"EXTENSION_{field}", [])) for field in EXTENSION_FIELDS}


def module_lists() -> tuple[str, list[str], list[str], list[str]]:
    """Module name, module scripts, module resources and engine scripts, ``${MODULE_NAME}`` expanded."""
    values = cmake_sets(MODULE_CMAKE.read_text(encoding="utf-8"))
    name = values["MODULE_NAME"][0]

    def expand(items: list[str]) -> list[str]:
        return [item.replace("${MODULE_NAME}", name) for item in items]

    return (
        name,
        expand(values.get("MODULE_PYTHON_SCRIPTS", [])),
        expand(values.get("MODULE_PYTHON_RESOURCES", [])),
        expand(values.get("RADALIB_PYTHON_SCRIPTS", [])),
    )


def python_files(folder: Path, relative_to: Path) -> set[str]:
    return {
        path.relative_to(relative_to).as_posix()
        for path in folder.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", (
        f"{path.name} is not a PNG file"
    )
    return struct.unpack(">II", head[16:24])


def repository_path_of(url: str, homepage: str) -> str:
    """The path inside this repository of a raw.githubusercontent.com URL of the homepage's repository."""
    owner_repo = homepage.removeprefix("https://github.com/").strip("/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/"
    assert url.startswith(prefix), f"{url} is not a file of {homepage}"
    return url[len(prefix) :].split("/", 1)[1]  # drop the branch name


# --- top-level CMakeLists.txt -----------------------------------------------------------------


def test_every_extension_field_is_set_and_not_empty():
    metadata = extension_metadata()
    assert {field for field, value in metadata.items() if not value.strip()} == set()


def test_extension_depends_on_the_pytorch_extension():
    assert "PyTorch" in re.split(r"[\s;]+", extension_metadata()["DEPENDS"])


def test_extension_urls_are_https_and_the_icon_url_names_a_file_of_this_repository():
    metadata = extension_metadata()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", metadata["HOMEPAGE"])
    icon = repository_path_of(metadata["ICONURL"], metadata["HOMEPAGE"])
    assert (ROOT / icon).is_file()
    for url in metadata["SCREENSHOTURLS"].split():
        repository_path_of(url, metadata["HOMEPAGE"])


def test_top_level_cmake_has_the_standard_extension_lines_and_adds_the_module():
    text = TOP_CMAKE.read_text(encoding="utf-8")
    assert commands(text, "project") == [["RADA"]]
    assert ["Slicer", "REQUIRED"] in commands(text, "find_package")
    includes = [args[0] for args in commands(text, "include")]
    assert includes == [
        "${Slicer_USE_FILE}",
        "${Slicer_EXTENSION_GENERATE_CONFIG}",
        "${Slicer_EXTENSION_CPACK}",
    ]
    assert ["RADASegment"] in commands(text, "add_subdirectory")


# --- RADASegment/CMakeLists.txt ---------------------------------------------------------------


def test_module_cmake_builds_the_scripted_module_with_its_scripts_resources_and_generic_tests():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    name, _, _, _ = module_lists()
    assert name == "RADASegment"
    calls = commands(text, "slicerMacroBuildScriptedModule")
    assert len(calls) == 1
    args = calls[0]
    keywords = {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"}
    assert keyword_values(args, "NAME", keywords) == ["${MODULE_NAME}"]
    assert keyword_values(args, "SCRIPTS", keywords) == ["${MODULE_PYTHON_SCRIPTS}"]
    assert keyword_values(args, "RESOURCES", keywords) == ["${MODULE_PYTHON_RESOURCES}"]
    assert "WITH_GENERIC_TESTS" in args


def test_module_cmake_lists_the_module_file_and_every_python_file_of_its_library():
    name, scripts, _, _ = module_lists()
    # Every .py under RADASegment/ (a Slicer-style Testing/ folder would be built on its own).
    on_disk = {f for f in python_files(MODULE_DIR, MODULE_DIR) if not f.startswith("Testing/")}
    assert f"{name}.py" in on_disk and f"{name}Lib/__init__.py" in on_disk
    assert sorted(on_disk - set(scripts)) == [], (
        "add these to MODULE_PYTHON_SCRIPTS in RADASegment/CMakeLists.txt"
    )
    assert sorted(set(scripts) - on_disk) == [], (
        "MODULE_PYTHON_SCRIPTS lists files that do not exist"
    )
    assert len(scripts) == len(set(scripts)), "a script is listed twice"


def test_module_cmake_lists_every_python_file_of_the_engine():
    _, _, _, engine = module_lists()
    on_disk = python_files(ENGINE_DIR, ROOT)
    assert sorted(on_disk - set(engine)) == [], (
        "add these to RADALIB_PYTHON_SCRIPTS in RADASegment/CMakeLists.txt"
    )
    assert sorted(set(engine) - on_disk) == [], (
        "RADALIB_PYTHON_SCRIPTS lists files that do not exist"
    )
    assert len(engine) == len(set(engine)), "an engine file is listed twice"


def test_every_listed_module_file_exists():
    _, scripts, resources, _ = module_lists()
    missing = [item for item in scripts + resources if not (MODULE_DIR / item).is_file()]
    assert missing == []


def test_every_listed_engine_file_exists():
    _, _, _, engine = module_lists()
    assert [item for item in engine if not (ROOT / item).is_file()] == []


def test_module_resources_include_the_panel_ui_and_the_module_icon():
    name, _, resources, _ = module_lists()
    assert f"Resources/UI/{name}.ui" in resources
    assert f"Resources/Icons/{name}.png" in resources
    assert (MODULE_DIR / "Resources" / "UI" / f"{name}.ui").is_file()


def test_engine_is_installed_beside_the_module_from_the_repository_top():
    calls = commands(MODULE_CMAKE.read_text(encoding="utf-8"), "ctkMacroCompilePythonScript")
    assert len(calls) == 1
    args = calls[0]
    keywords = {
        "TARGET_NAME", "SCRIPTS", "RESOURCES", "SOURCE_DIR", "DESTINATION_DIR", "INSTALL_DIR",
        "NO_INSTALL_SUBDIR", "GLOBAL_TARGET",
    }  # fmt: skip
    assert keyword_values(args, "SCRIPTS", keywords) == ["${RADALIB_PYTHON_SCRIPTS}"]
    source_dir = keyword_values(args, "SOURCE_DIR", keywords)
    assert source_dir in (
        ["${CMAKE_CURRENT_SOURCE_DIR}/.."],
        ["${PROJECT_SOURCE_DIR}"],
        ["${RADA_SOURCE_DIR}"],
    )
    # The same folder as slicerMacroBuildScriptedModule uses for the module itself:
    assert keyword_values(args, "DESTINATION_DIR", keywords) == [
        "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"
    ]
    assert keyword_values(args, "INSTALL_DIR", keywords) == [
        "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    ]
    assert "NO_INSTALL_SUBDIR" in args
    _, _, _, engine = module_lists()
    assert all(item.startswith("RADALib/") for item in engine)


def test_module_self_test_is_registered_when_testing_is_built():
    text = strip_comments(MODULE_CMAKE.read_text(encoding="utf-8"))
    block = re.search(r"if\s*\(\s*BUILD_TESTING\s*\)(.*?)endif\s*\(", text, re.S | re.I)
    assert block, "no if(BUILD_TESTING) block"
    assert commands(block.group(1), "slicer_add_python_unittest") == [
        ["SCRIPT", "${MODULE_NAME}.py"]
    ]


STUB_SLICER = r"""
# Stand-ins of Slicer's and CTK's macros: same keywords, same existence checks, no build.
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.12/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
set(BUILD_TESTING ON)
function(_stub_require_files base)
  foreach(value ${ARGN})
    if(NOT EXISTS "${base}/${value}")
      message(FATAL_ERROR "nonexistent file '${value}'")
    endif()
    file(APPEND ${CMAKE_BINARY_DIR}/listed.txt "${value}\n")
  endforeach()
endfunction()
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  _stub_require_files(${CMAKE_CURRENT_SOURCE_DIR} ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
endmacro()
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to ctkMacroCompilePythonScript(): ${MY_UNPARSED_ARGUMENTS}")
  endif()
  foreach(var TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED MY_${var})
      message(FATAL_ERROR "${var} is mandatory")
    endif()
  endforeach()
  _stub_require_files(${MY_SOURCE_DIR} ${MY_SCRIPTS})
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS" ${ARGN})
  _stub_require_files(${CMAKE_CURRENT_SOURCE_DIR} ${MY_SCRIPT})
endmacro()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH")
def test_module_cmake_configures_against_stand_ins_of_slicers_macros(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "stub_slicer.cmake").write_text(STUB_SLICER, encoding="utf-8")
    (tmp_path / "src" / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(StubRADA NONE)\n"
        "include(${CMAKE_CURRENT_SOURCE_DIR}/stub_slicer.cmake)\n"
        f'add_subdirectory("{MODULE_DIR.as_posix()}" RADASegment)\n',
        encoding="utf-8",
    )
    result = subprocess.run(
        ["cmake", "-S", str(tmp_path / "src"), "-B", str(tmp_path / "build")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    listed = set((tmp_path / "build" / "listed.txt").read_text(encoding="utf-8").split())
    assert "RADALib/__init__.py" in listed and "RADASegment.py" in listed


# --- icons ------------------------------------------------------------------------------------


def test_module_icon_is_a_128_pixel_square_png():
    assert png_size(MODULE_DIR / "Resources" / "Icons" / "RADASegment.png") == (128, 128)


def test_extension_icon_is_a_128_pixel_square_png():
    assert png_size(ROOT / "Resources" / "Icons" / "RADA.png") == (128, 128)


# --- the extensions index catalog entry --------------------------------------------------------


def catalog() -> dict:
    return json.loads(CATALOG.read_text(encoding="utf-8"))


def test_catalog_entry_is_named_after_the_extension_and_follows_slicers_schema():
    assert CATALOG.stem == commands(TOP_CMAKE.read_text(encoding="utf-8"), "project")[0][0]
    entry = catalog()
    assert CATALOG_REQUIRED <= entry.keys()
    assert set(entry) <= CATALOG_PROPERTIES, (
        f"unknown keys: {sorted(set(entry) - CATALOG_PROPERTIES)}"
    )
    assert re.fullmatch(
        r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
        r"slicer-extension-catalog-entry-schema-v\d+\.\d+\.\d+\.json#?",
        entry["$schema"],
    )
    assert isinstance(entry["build_dependencies"], list) and all(
        isinstance(d, str) for d in entry["build_dependencies"]
    )
    assert entry.get("scm_type", "git") == "git"
    assert entry.get("tier", 1) in (1, 3, 5)
    assert isinstance(entry.get("scm_revision", ""), str) and isinstance(
        entry.get("build_subdirectory", "."), str
    )


def test_catalog_entry_points_at_the_homepage_repository():
    homepage = extension_metadata()["HOMEPAGE"].rstrip("/")
    assert catalog()["scm_url"].removesuffix(".git").rstrip("/") == homepage


def test_catalog_entry_build_dependencies_match_the_cmake_depends_and_include_pytorch():
    entry = catalog()
    assert "PyTorch" in entry["build_dependencies"]
    depends = [d for d in re.split(r"[\s;]+", extension_metadata()["DEPENDS"]) if d and d != "NA"]
    assert sorted(entry["build_dependencies"]) == sorted(depends)


def test_catalog_entry_category_matches_the_cmake_category():
    assert catalog()["category"] == extension_metadata()["CATEGORY"]


def test_repository_root_has_the_apache_license_the_extensions_index_checks_for():
    """ExtensionsIndex scripts/check_description_files.py (check_license_file) rejects a repository
    without LICENSE (or LICENCE, LICENSE.txt, COPYING...) at its root."""
    license_file = ROOT / "LICENSE"
    assert license_file.is_file(), "no LICENSE at the repository root"
    text = license_file.read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    for section in (
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
    ):
        assert section in text, f"LICENSE is not the full Apache-2.0 text: {section!r} missing"
    assert "Copyright 2026 the RADA for 3D Slicer authors" in text
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'license = { text = "Apache-2.0" }' in pyproject
    assert "Apache-2.0" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_package_carries_this_repositorys_license_not_slicers():
    """UseSlicer.cmake.in defaults EXTENSION_LICENSE_FILE to Slicer's licence when it is not defined."""
    text = strip_comments(TOP_CMAKE.read_text(encoding="utf-8"))
    assert cmake_sets(text).get("EXTENSION_LICENSE_FILE") == ["${CMAKE_CURRENT_SOURCE_DIR}/LICENSE"]
    assert text.index("EXTENSION_LICENSE_FILE") < text.index("include(${Slicer_USE_FILE})")
