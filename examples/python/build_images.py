#!/usr/bin/python3
"""Build N unique NBDE images from one base image with the luksforge Python module.

    build_images.py BASE --policy POLICY --count N --out DIR [--build-passphrase-file FILE] [--ledger DB]

BASE is a disk image from any build pipeline (a bare LUKS2 file or a GPT/MBR disk with one LUKS2 partition).
When it still carries its build passphrase (--build-passphrase-file), it is sealed first: re-keyed, bound to
the policy's Tang servers, verified, build passphrase removed. Then N instances are stamped, each with its own
volume key and binding, and the result is audited: the script fails if any two images share a volume key.
A JSON summary goes to stdout.
"""

import argparse
import json
import sys
from pathlib import Path

import luksforge


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--build-passphrase-file", type=Path)
    parser.add_argument("--ledger", type=Path)
    args = parser.parse_args(argv)

    summary = {"base": str(args.base)}
    try:
        policy = luksforge.Policy.load(args.policy)
        policy.require_valid()  # every problem with line numbers, before anything is written
        if args.build_passphrase_file:
            with luksforge.read_secret_file(args.build_passphrase_file) as build_passphrase:
                report = luksforge.seal(args.base, build_passphrase, policy=args.policy, ledger=args.ledger,
                                        on_step=lambda step: print(f"seal: {step}", file=sys.stderr))
            summary["sealed"] = report.to_dict()
        stamped = luksforge.stamp(args.base, args.count, args.out, policy=args.policy, ledger=args.ledger,
                                  on_instance=lambda path, i, n: print(f"stamping {i + 1}/{n}: {path}",
                                                                       file=sys.stderr))
        summary["instances"] = [{"image": str(i.image), "fingerprint": i.fingerprint, "keyslot": i.keyslot}
                                for i in stamped.instances]
        audit = luksforge.audit([args.base] + [i.image for i in stamped.instances], max_per_key=1)
        summary["shared_keys"] = audit.flagged_groups
    except luksforge.Error as e:
        print(f"build_images: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0 if summary["shared_keys"] == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
