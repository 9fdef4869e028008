#!/usr/bin/python3
"""Seal and stamp a disk image made by livemedia-creator --make-disk (it has no post-build hook).

livemedia-creator runs the kickstart's %post once, so every copy of its image shares one LUKS volume key.
This step, run on <resultdir>/<image> after livemedia-creator exits:

1. finds the LUKS2 partition of the whole-disk image (GPT or MBR) or takes a bare LUKS image;
2. gets a passphrase that opens it: --build-passphrase-file, or — when the kickstart's %post already bound
   the volume to Tang and removed the build passphrase (kickstarts/lmc-make-disk.ks) — the passphrase its
   Clevis token recovers through Tang;
3. seals it (`luksforge seal`): fresh volume key by re-encryption, the policy's pins bound and verified
   through the real Tang servers, then that passphrase's keyslot removed together with its token (the %post
   binding's); writes the JSON report;
4. with --count N, stamps N instances into --out, each with its own volume key and verified binding.

Run `qemu-img convert` afterwards if another format than raw is wanted.
"""

import argparse
import os
import sys
from pathlib import Path

import luksforge


def recover_passphrase(image, partition, network):
    """The passphrase a Clevis binding of the image recovers through Tang (returns a luksforge.Secret)."""
    target = luksforge.select_luks_target(image, partition=partition)
    with luksforge.attach_target(target, read_only=True) as attached:
        with luksforge.Volume.open(attached.device, read_only=True) as volume:
            try:
                return volume.unlock(network=network).passphrase
            except luksforge.Error as first:
                # An interrupted re-encryption leaves the binding's token on its keyslot and on that keyslot's
                # successor for the new volume key (both opened by one passphrase): decrypt the JWE itself, and
                # let seal check it against the keyslots.
                for token in volume.tokens():
                    if token.type != "clevis":
                        continue
                    try:
                        return luksforge.clevis_decrypt(luksforge.token_to_compact(token.json), network=network)
                    except luksforge.Error:
                        continue
                raise first


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="the disk image livemedia-creator wrote")
    parser.add_argument("--policy", type=Path, required=True, help="deployment policy (TOML)")
    parser.add_argument("--build-passphrase-file", type=Path,
                        help="file holding the kickstart's build passphrase (default: recover it via Clevis)")
    parser.add_argument("--partition", type=int, help="LUKS2 partition number when the image has several")
    parser.add_argument("--report", type=Path, help="seal report (default: IMAGE.seal.json)")
    # A string, not a Path: pathlib would fold postgresql://host/db into postgresql:/host/db, a local file.
    parser.add_argument("--ledger",
                        help="key ledger: a database file or a postgresql:// URL (default: the policy's ledger, "
                             "else $LUKSFORGE_LEDGER, else none)")
    parser.add_argument("--count", type=int, default=0, help="stamp this many unique instances")
    parser.add_argument("--out", type=Path, help="directory for the instances (with --count)")
    parser.add_argument("--timeout-ms", type=int, default=10000, help="per-request Tang timeout")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.count and not args.out:
        parser.error("--count needs --out")

    def say(message):
        if not args.quiet:
            print(f"lmc-postbuild: {message}", file=sys.stderr, flush=True)

    network = luksforge.NetworkOptions(total_timeout_ms=args.timeout_ms)
    try:
        # Where `luksforge seal`/`stamp` would record with this policy, so every builder of a farm counts in the
        # one database its policy names.
        ledger = args.ledger or luksforge.Policy.load(args.policy).ledger or os.environ.get("LUKSFORGE_LEDGER") or None
        if args.build_passphrase_file:
            passphrase = luksforge.read_secret_file(args.build_passphrase_file)
        else:
            say("recovering the build-time binding's passphrase through Tang")
            passphrase = recover_passphrase(args.image, args.partition, network)
        with passphrase:
            last = [-1]

            def progress(done, total):
                percent = 100 * done // max(total, 1)
                if percent // 10 != last[0] // 10:
                    say(f"re-encrypting: {percent}%")
                last[0] = percent

            report = luksforge.seal(args.image, passphrase, policy=args.policy, partition=args.partition,
                                    ledger=ledger, network=network, on_step=lambda s: say(f"seal: {s}"),
                                    progress=progress)
        report_path = args.report or args.image.with_name(args.image.name + ".seal.json")
        report_path.write_text(report.to_json() + "\n")
        say(f"sealed {report.image}: volume key {report.fingerprint_before[:16]}… → {report.fingerprint_after[:16]}…"
            f" (report: {report_path})")
        if args.count:
            stamped = luksforge.stamp(args.image, args.count, args.out, policy=args.policy,
                                      partition=args.partition, ledger=ledger, network=network,
                                      on_instance=lambda path, i, n: say(f"stamping {i + 1}/{n}: {path}"))
            for instance in stamped.instances:
                print(instance.image)
    except (luksforge.Error, OSError) as e:
        print(f"lmc-postbuild: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
