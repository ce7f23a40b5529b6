#!/usr/bin/env python3
"""Generate a compact JSON digest of the FHIR R4 (4.0.1) resource and datatype
definitions from the official StructureDefinitions (snapshot form).

Source: Maven artifact ca.uhn.hapi.fhir:hapi-fhir-validation-resources-r4
(jar Apache-2.0; the FHIR specification content in it is CC0, see
hl7.org/fhir/R4/license.html), files
org/hl7/fhir/r4/model/profile/profiles-types.xml and profiles-resources.xml.

Usage:
  python3 gen.py [--jar PATH] [--version V] > fhir-r4.json
  python3 gen.py [--jar PATH] --out fhir-r4.json [--check]
  python3 gen.py --check [FILE]        # check an existing digest (default: fhir-r4.json here)

Without --jar the jar is taken from the local Maven repository (~/.m2) if it is
already there, else fetched with `mvn dependency:copy` (Maven's own client and
registry settings).  Standard library only.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile

GROUP = "ca.uhn.hapi.fhir"
ARTIFACT = "hapi-fhir-validation-resources-r4"
DEFAULT_VERSION = "8.12.1"
PROFILE_DIR = "org/hl7/fhir/r4/model/profile/"
TYPES_XML = PROFILE_DIR + "profiles-types.xml"
RESOURCES_XML = PROFILE_DIR + "profiles-resources.xml"
FHIR_VERSION = "4.0.1"
LICENSE = "FHIR R4 specification content, CC0 (hl7.org/fhir/R4/license.html)"

NS = "{http://hl7.org/fhir}"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
SYSTEM_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}
# JSON representation kinds of the primitive roots; every other primitive is a JSON string.
JSON_KIND_ROOTS = {"boolean": "boolean", "integer": "integer", "decimal": "decimal"}
SD_URL = "http://hl7.org/fhir/StructureDefinition/"

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fhir-r4.json")


def log(*a):
    print(*a, file=sys.stderr)


# ---------------------------------------------------------------- fetching

def local_repo_jar(version):
    base = os.path.expanduser("~/.m2/repository")
    p = os.path.join(base, *GROUP.split("."), ARTIFACT, version, f"{ARTIFACT}-{version}.jar")
    return p if os.path.isfile(p) else None


def verify_sha1(jar):
    side = jar + ".sha1"
    if not os.path.isfile(side):
        return
    want = open(side).read().split()[0].strip().lower()
    got = hashlib.sha1(open(jar, "rb").read()).hexdigest()
    if want != got:
        sys.exit(f"sha1 mismatch for {jar}: {got} != {want}")


def mvn_fetch(version, dest):
    mvn = shutil.which("mvn")
    if not mvn:
        sys.exit("no --jar given, artifact not in ~/.m2 and mvn not found")
    coords = f"{GROUP}:{ARTIFACT}:{version}"
    log(f"fetching {coords} with mvn dependency:copy")
    r = subprocess.run([mvn, "-q", "-B", "dependency:copy", f"-Dartifact={coords}",
                        f"-DoutputDirectory={dest}"], stdout=sys.stderr, stderr=sys.stderr)
    p = os.path.join(dest, f"{ARTIFACT}-{version}.jar")
    if r.returncode != 0 or not os.path.isfile(p):
        sys.exit(f"mvn could not fetch {coords} (exit {r.returncode})")
    return p


def find_jar(args, tmpdir):
    if args.jar:
        if not os.path.isfile(args.jar):
            sys.exit(f"--jar {args.jar}: no such file")
        return args.jar
    p = local_repo_jar(args.version)
    if p:
        verify_sha1(p)
        log(f"using {p}")
        return p
    return mvn_fetch(args.version, tmpdir)


# ---------------------------------------------------------------- parsing

def val(el, tag):
    c = el.find(NS + tag)
    return None if c is None else c.get("value")


def type_code(t):
    """Type code of an ElementDefinition.type; FHIRPath system types mapped to FHIR names."""
    code = val(t, "code")
    if code in SYSTEM_TYPES or (code or "").startswith("http://hl7.org/fhirpath/"):
        for ext in t.findall(NS + "extension"):
            if ext.get("url") == FHIR_TYPE_EXT:
                v = val(ext, "valueUrl") or val(ext, "valueUri")
                if v:
                    return v.rsplit("/", 1)[-1]
        if code not in SYSTEM_TYPES:
            raise ValueError(f"unknown FHIRPath system type {code}")
        return SYSTEM_TYPES[code]
    return code


def structure_definitions(xml_bytes):
    root = ET.fromstring(xml_bytes)
    for entry in root.findall(NS + "entry"):
        res = entry.find(NS + "resource")
        if res is None:
            continue
        sd = res.find(NS + "StructureDefinition")
        if sd is not None:
            yield sd


def digest_elements(sd, notes):
    """Nested ELEMENT list from an SD's snapshot (root element excluded)."""
    root_path = val(sd, "type")
    name = val(sd, "name")
    nodes = {}        # path -> node (for parents)
    dropped = set()   # paths omitted (max 0) - their descendants go too
    top = []
    snap = sd.find(NS + "snapshot")
    if snap is None:
        raise ValueError(f"{name}: no snapshot")
    for e in snap.findall(NS + "element"):
        path = val(e, "path")
        if e.find(NS + "sliceName") is not None or ":" in (e.get("id") or ""):
            notes.append(f"{name}: skipped slice {e.get('id')}")
            continue
        if path == root_path:
            continue
        parent, _, last = path.rpartition(".")
        if parent in dropped:
            dropped.add(path)
            continue
        mx = val(e, "max")
        if mx == "0":
            dropped.add(path)
            notes.append(f"{name}: omitted {path} (max 0)")
            continue
        node = {"name": last}
        types = []
        for t in e.findall(NS + "type"):
            c = type_code(t)
            if c not in types:
                types.append(c)
            else:
                notes.append(f"{name}: duplicate type {c} on {path}")
        if types:
            node["types"] = types
        node["max"] = mx
        cref = val(e, "contentReference")
        if cref:
            node["ref"] = cref.split("#", 1)[1] if "#" in cref else cref
        if parent == root_path:
            top.append(node)
        elif parent in nodes:
            nodes[parent].setdefault("children", []).append(node)
        else:
            raise ValueError(f"{name}: {path} has no parent element before it in the snapshot")
        nodes[path] = node
    return top


def build(jar_path, version):
    with zipfile.ZipFile(jar_path) as z:
        types_xml = z.read(TYPES_XML)
        res_xml = z.read(RESOURCES_XML)
    notes = []
    primitives_base = {}
    types, aliases, resources = {}, {}, {}
    skipped = []
    for sd in list(structure_definitions(types_xml)) + list(structure_definitions(res_xml)):
        fv = val(sd, "fhirVersion")
        if fv != FHIR_VERSION:
            raise ValueError(f"{val(sd, 'name')}: fhirVersion {fv}")
        name, kind, deriv = val(sd, "name"), val(sd, "kind"), val(sd, "derivation")
        tname = val(sd, "type")
        base = (val(sd, "baseDefinition") or "")
        if deriv == "constraint":
            aliases[name] = tname
            continue
        if kind == "primitive-type":
            primitives_base[name] = base[len(SD_URL):] if base.startswith(SD_URL) else base
        elif kind == "complex-type":
            types[name] = digest_elements(sd, notes)
        elif kind == "resource":
            resources[name] = digest_elements(sd, notes)
        else:
            skipped.append(f"{name} (kind {kind})")
    # primitive JSON kind: follow baseDefinition up to boolean/integer/decimal, else string
    primitives = {}
    for p in primitives_base:
        cur, seen = p, set()
        while cur in primitives_base and cur not in JSON_KIND_ROOTS and cur not in seen:
            seen.add(cur)
            cur = primitives_base[cur]
        primitives[p] = JSON_KIND_ROOTS.get(cur, "string")
    for s in skipped:
        notes.append(f"skipped StructureDefinition {s}")
    doc = {
        "fhirVersion": FHIR_VERSION,
        "source": f"Maven {GROUP}:{ARTIFACT}:{version} jar: {TYPES_XML}, {RESOURCES_XML} "
                  f"(StructureDefinition snapshots)",
        "license": LICENSE,
        "primitives": primitives,
        "types": types,
        "aliases": aliases,
        "resources": resources,
    }
    return doc, notes


# ---------------------------------------------------------------- checks

def walk(elems, prefix):
    for e in elems:
        p = f"{prefix}.{e['name']}"
        yield p, e
        yield from walk(e.get("children", []), p)


def check(doc, raw_size=None):
    failures = []

    def ok(cond, msg):
        if not cond:
            failures.append(msg)

    def get(container, root, dotted):
        elems = container.get(root, [])
        e = None
        for part in dotted.split("."):
            e = next((x for x in elems if x["name"] == part), None)
            if e is None:
                return None
            elems = e.get("children", [])
        return e

    ok(doc.get("fhirVersion") == "4.0.1", "fhirVersion is 4.0.1")
    for k in ("source", "license", "primitives", "types", "aliases", "resources"):
        ok(k in doc, f"key {k} present")
    P, T, R, A = doc["primitives"], doc["types"], doc["resources"], doc["aliases"]
    ok(len(P) == 20, f"20 primitives (got {len(P)})")
    for p, k in {"boolean": "boolean", "integer": "integer", "positiveInt": "integer",
                 "unsignedInt": "integer", "decimal": "decimal", "string": "string",
                 "date": "string", "instant": "string", "xhtml": "string", "code": "string",
                 "base64Binary": "string", "canonical": "string"}.items():
        ok(P.get(p) == k, f"primitive {p} -> {k} (got {P.get(p)})")
    ok(set(P.values()) <= {"boolean", "integer", "decimal", "string"}, "primitive kinds")
    ok(len(R) == 148, f"148 resources = 146 + Resource + DomainResource (got {len(R)})")
    for r in ("Patient", "Observation", "Bundle", "Parameters", "Resource", "DomainResource",
              "Questionnaire", "Binary", "MedicationRequest"):
        ok(r in R, f"resource {r}")
    ok(len(T) == 41, f"41 complex datatypes (got {len(T)})")
    for t in ("Element", "BackboneElement", "Extension", "Reference", "Meta", "Narrative",
              "Dosage", "Timing", "HumanName", "Quantity", "Age", "ElementDefinition"):
        ok(t in T, f"type {t}")
    ok(not set(T) & set(P), "no primitive in types")
    ok(A == {"SimpleQuantity": "Quantity", "MoneyQuantity": "Quantity"}, f"aliases {A}")
    ok(not set(A) & set(T), "aliases not in types")
    ok([e["name"] for e in R["Patient"][:8]] == ["id", "meta", "implicitRules", "language",
                                                 "text", "contained", "extension",
                                                 "modifierExtension"], "Patient inherited elements")
    ok([e["name"] for e in R["Resource"]] == ["id", "meta", "implicitRules", "language"],
       "Resource elements")
    e = get(R, "Patient", "deceased[x]")
    ok(e and e.get("types") == ["boolean", "dateTime"] and e["max"] == "1", "Patient.deceased[x]")
    e = get(R, "Patient", "birthDate")
    ok(e == {"name": "birthDate", "types": ["date"], "max": "1"}, f"Patient.birthDate {e}")
    e = get(R, "Patient", "contact")
    ok(e and e.get("types") == ["BackboneElement"] and e["max"] == "*"
       and [c["name"] for c in e.get("children", [])][:3] == ["id", "extension", "modifierExtension"]
       and get(R, "Patient", "contact.name").get("types") == ["HumanName"], "Patient.contact backbone")
    e = get(R, "Observation", "value[x]")
    ok(e and len(e.get("types", [])) == 11 and e["types"][0] == "Quantity", f"Observation.value[x] 11 types")
    e = get(R, "Questionnaire", "item.item")
    ok(e == {"name": "item", "max": "*", "ref": "Questionnaire.item"}, f"Questionnaire.item.item ref {e}")
    e = get(T, "Extension", "value[x]")
    ok(e and len(e.get("types", [])) == 50, f"Extension.value[x] 50 types (got {e and len(e.get('types', []))})")
    ok(get(T, "Extension", "url") == {"name": "url", "types": ["uri"], "max": "1"}, "Extension.url uri")
    ok(get(T, "Element", "id") == {"name": "id", "types": ["string"], "max": "1"}, "Element.id string")
    ok(get(T, "Element", "extension") == {"name": "extension", "types": ["Extension"], "max": "*"},
       "Element.extension")
    ok(get(T, "Narrative", "div").get("types") == ["xhtml"], "Narrative.div xhtml")
    ok(get(T, "Timing", "repeat.bounds[x]").get("types") == ["Duration", "Range", "Period"],
       "Timing.repeat.bounds[x]")
    ok(get(T, "Quantity", "comparator") is not None, "Quantity.comparator present")
    # global invariants
    known = set(P) | set(T) | {"Resource"} | set(R)
    for group, cont in (("types", T), ("resources", R)):
        for root, elems in cont.items():
            paths = {p: e for p, e in walk(elems, root)}
            for p, e in paths.items():
                ok(set(e) <= {"name", "types", "max", "children", "ref"}, f"{p} keys")
                ok(e["max"] != "0", f"{p} max 0 not omitted")
                ok(e["max"] == "*" or e["max"].isdigit(), f"{p} max {e['max']}")
                ok(("types" in e) != ("ref" in e), f"{p}: exactly one of types/ref")
                for t in e.get("types", []):
                    ok(t in known, f"{p}: unknown type {t}")
                    ok("/" not in t and "System." not in t, f"{p}: raw type code {t}")
                if e["name"].endswith("[x]"):
                    ok(len(e.get("types", [])) >= 1, f"{p}: choice without types")
                if "ref" in e:
                    tgt_root = e["ref"].split(".")[0]
                    tgt = get(cont, tgt_root, e["ref"].split(".", 1)[1])
                    ok(tgt is not None and tgt.get("children"), f"{p}: ref {e['ref']} resolves to a backbone")
    if raw_size is not None:
        ok(raw_size < 3 * 1024 * 1024, f"size {raw_size} < 3 MiB")
    return failures


def stats(doc):
    refs, odd_max, counts = [], [], {"elements": 0}
    for cont in (doc["types"], doc["resources"]):
        for root, elems in cont.items():
            for p, e in walk(elems, root):
                counts["elements"] += 1
                if "ref" in e:
                    refs.append(f"{p} -> {e['ref']}")
                if e["max"] not in ("1", "*"):
                    odd_max.append(f"{p} max {e['max']}")
    return refs, odd_max, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jar", help="already downloaded hapi-fhir-validation-resources-r4 jar")
    ap.add_argument("--version", default=DEFAULT_VERSION, help="artifact version (default %(default)s)")
    ap.add_argument("--out", help="write the digest here instead of stdout")
    ap.add_argument("--check", nargs="?", const="", metavar="FILE",
                    help="assert sanity facts; alone: on FILE (default fhir-r4.json beside gen.py); "
                         "with --jar/--out: on the freshly generated digest")
    ap.add_argument("--verbose", "-v", action="store_true", help="print notes and statistics to stderr")
    args = ap.parse_args()

    if args.check is not None and not args.jar and not args.out:
        path = args.check or DEFAULT_OUT
        raw = open(path, "rb").read()
        doc = json.loads(raw)
        fails = check(doc, len(raw))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            doc, notes = build(find_jar(args, tmp), args.version)
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if args.out:
            with open(args.out, "wb") as f:
                f.write(raw + b"\n")
            log(f"wrote {args.out}: {len(raw)} bytes")
        else:
            sys.stdout.buffer.write(raw + b"\n")
        if args.verbose:
            for n in notes:
                log("note:", n)
        fails = check(doc, len(raw)) if args.check is not None else []
    if args.verbose or args.check is not None:
        refs, odd_max, counts = stats(doc)
        log(f"primitives {len(doc['primitives'])}, types {len(doc['types'])}, aliases {len(doc['aliases'])}, "
            f"resources {len(doc['resources'])}, elements {counts['elements']}, contentReferences {len(refs)}")
        if args.verbose:
            for r in refs:
                log("ref:", r)
            for m in odd_max:
                log("max:", m)
    if args.check is not None:
        for f in fails:
            log("FAIL:", f)
        log("check: " + ("OK" if not fails else f"{len(fails)} failed"))
        sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
