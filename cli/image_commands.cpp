// Image pipeline subcommands: probe, seal, stamp, clone, audit.
#include "commands.hpp"
#include "common.hpp"

#include <luksforge/error.hpp>
#include <luksforge/image.hpp>
#include <luksforge/ledger.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pipeline.hpp>
#include <luksforge/policy.hpp>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace luksforge::cli {
namespace {

std::optional<int> partition_of(int number) { return number > 0 ? std::optional<int>(number) : std::nullopt; }

// Exit code of `audit` when a key is shared beyond the limit and --strict was given.
constexpr int exit_shared_keys = 8;
// Exit code of `audit --strict` when no key is over-shared but a Tang private key sits in a scanned image or a
// binding's trusted Tang key is on the image or on this host.
constexpr int exit_tang_keys_exposed = 9;

void write_report(const std::string& path, const std::string& json) {
    if (path.empty()) return;
    if (path == "-") {
        print_json(json);
        return;
    }
    std::ofstream out(path, std::ios::trunc);
    if (!out) throw Error(errno, "cannot write report " + path);
    out << json << "\n";
    if (!out.flush()) throw Error(EIO, "cannot write report " + path);
}

// Refuse before anything is written when the policy's token would not fit the volume's LUKS2 metadata.
// An unfinished seal already made its room (or its binding), so only a fresh image is measured.
void refuse_binding_that_does_not_fit(const Policy& policy, const std::string& image, std::optional<int> partition) {
    AttachedTarget attached = AttachedTarget::attach(select_luks_target(image, partition), true);
    Volume volume = Volume::open(attached.device(), Volume::Access::read_only);
    for (const Token& token : volume.tokens())
        if (token.type == "luksforge-seal" || token.type == "clevis") return;
    if (auto problem = policy.binding_fits(volume)) throw FormatError(problem->to_string());
}

void register_probe(CLI::App& app) {
    struct Options {
        std::string image;
        bool json = false;
    };
    auto opts = std::make_shared<Options>();
    auto* cmd = app.add_subcommand("probe", "Show an image's partition table, partitions and LUKS volumes");
    cmd->add_option("IMAGE", opts->image, "Disk image, bare LUKS file or block device")->required();
    cmd->add_flag("--json", opts->json, "Print JSON");
    set_action(*cmd, [opts] {
        ImageProbe probe = probe_image(opts->image);
        if (opts->json) {
            print_json(probe.to_json());
            return 0;
        }
        std::printf("%s: %s, %llu bytes\n", probe.path.c_str(), probe.block_device ? "block device" : "file",
                    static_cast<unsigned long long>(probe.size_bytes));
        if (probe.luks_version) {
            std::printf("bare LUKS%d volume, UUID %s\n", *probe.luks_version, probe.luks_uuid.c_str());
            return 0;
        }
        if (probe.table.empty()) {
            std::printf("no partition table and no LUKS header\n");
            return 0;
        }
        std::printf("partition table: %s (%s)\n", probe.table.c_str(), probe.table_uuid.c_str());
        std::printf("%-4s %12s %12s  %-36s  %s\n", "#", "offset", "size", "type", "contents");
        for (const Partition& p : probe.partitions) {
            std::string contents = p.luks_version ? "LUKS" + std::to_string(*p.luks_version) + " " + p.luks_uuid : "";
            if (!p.name.empty()) contents += (contents.empty() ? "" : "  ") + std::string("name=") + p.name;
            std::printf("%-4d %12llu %12llu  %-36s  %s\n", p.number, static_cast<unsigned long long>(p.offset_bytes),
                        static_cast<unsigned long long>(p.size_bytes), p.type.c_str(), contents.c_str());
        }
        return 0;
    });
}

// Where the ledger is: --ledger, else the policy's `ledger`, else $LUKSFORGE_LEDGER, else the default file.
std::filesystem::path ledger_location(const std::string& flag, const std::string& policy_path) {
    if (!flag.empty()) return flag;
    if (!policy_path.empty()) {
        Policy policy = Policy::load(policy_path);
        if (!policy.ledger.empty()) return policy.ledger;
    }
    return Ledger::default_location();
}

const std::string ledger_help =
    "Ledger: a database file or a postgresql:// URL (default: the policy's ledger, $LUKSFORGE_LEDGER or " +
    Ledger::default_path().string() + ")";

void register_seal(CLI::App& app) {
    struct Options {
        std::string image, policy, report, ledger;
        SecretOption build;
        int partition = 0;
        bool no_ledger = false, quiet = false, copy = false;
    };
    auto opts = std::make_shared<Options>();
    auto* cmd = app.add_subcommand(
        "seal",
        "Re-key an image to a fresh volume key, bind the policy's pin, verify it through Tang, then remove the "
        "build passphrase (crash-safe: rerun to finish an interrupted seal)");
    cmd->add_option("IMAGE", opts->image, "Whole-disk image, bare LUKS file or block device")->required();
    cmd->add_option("--policy", opts->policy, "Policy file (TOML): the pin to bind")->required();
    add_secret_option(*cmd, opts->build, "build-passphrase", "The build passphrase (removed once the binding works)",
                      true);
    cmd->add_option("--report", opts->report, "Write the JSON report to FILE ('-' = stdout)");
    cmd->add_option("--partition", opts->partition, "The LUKS2 partition to seal when there are several")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--ledger", opts->ledger, ledger_help);
    cmd->add_flag("--no-ledger", opts->no_ledger, "Do not record the sealed key in a ledger");
    cmd->add_flag("-q,--quiet", opts->quiet, "No progress messages");
    cmd->add_flag("--copy", opts->copy,
                  "Allow a copy: write the sealed image in one pass next to IMAGE and rename it over IMAGE (faster; "
                  "needs room for a second image; falls back to sealing in place where a copy is not possible)");
    set_action(*cmd, [opts] {
        Policy policy = Policy::load(opts->policy);
        policy.require_valid();
        policy.require_no_tpm2("seal");
        SealOptions options;
        Policy::Pin pin = policy.pin();
        options.binding = {pin.name, pin.config_json};
        options.policy = policy_source(opts->policy);
        options.partition = partition_of(opts->partition);
        options.pin_options = policy.pin_options();
        options.keyslot_pbkdf = policy.keyslot_pbkdf;
        options.copy = opts->copy;
        if (!opts->no_ledger) options.ledger = ledger_location(opts->ledger, opts->policy);
        auto bar = std::make_shared<ProgressBar>("re-encrypting");
        if (!opts->quiet) {
            options.on_step = [](const std::string& step) { std::fprintf(stderr, "seal: %s\n", step.c_str()); };
            options.on_progress = [bar](std::uint64_t done, std::uint64_t total) { bar->update(done, total); };
        }
        SecretBuffer build = opts->build.read("build passphrase");
        refuse_binding_that_does_not_fit(policy, opts->image, options.partition);
        SealReport report = seal(opts->image, build, options);
        bar->finish();
        if (!report.data_path_note.empty() && !opts->quiet)
            std::fprintf(stderr, "seal: %s\n", report.data_path_note.c_str());
        write_report(opts->report, report.to_json());
        if (report.already_sealed)
            std::fprintf(stderr, "%s is already sealed (keyslot %d, verified through Tang)\n", report.image.c_str(),
                         report.keyslot);
        else
            std::fprintf(stderr, "sealed %s: keyslot %d bound to %s and verified; build passphrase removed\n",
                         report.image.c_str(), report.keyslot, report.pin.c_str());
        return 0;
    });
}

void register_stamp(CLI::App& app) {
    struct Options {
        std::string base, out, ledger, policy, report;
        std::size_t count = 0;
        int partition = 0;
        bool drop_other_keyslots = false, json = false, dense = false, libcryptsetup = false;
    };
    auto opts = std::make_shared<Options>();
    auto* cmd = app.add_subcommand(
        "stamp", "Make N instance images of a sealed base, each with its own volume key, passphrase and binding");
    cmd->add_option("BASE", opts->base, "The sealed base image")->required();
    cmd->add_option("--count", opts->count, "Number of instances")->required()->check(CLI::Range(1, 9999));
    cmd->add_option("--out", opts->out, "Output directory (instances are named <base stem>-0001.img, ...)")->required();
    cmd->add_option("--ledger", opts->ledger, ledger_help);
    cmd->add_option("--policy", opts->policy,
                    "Policy: bind instances to its pin and enforce its max_instances_per_key (default: the base "
                    "binding's own servers, at most 1 image per key)");
    cmd->add_option("--partition", opts->partition, "The LUKS2 partition when there are several")
        ->check(CLI::PositiveNumber);
    cmd->add_flag("--drop-other-keyslots", opts->drop_other_keyslots,
                  "Drop keyslots of the base other than its Clevis binding");
    cmd->add_flag("--dense", opts->dense,
                  "Write every sector of the data area, also where the base has holes (default: holes stay holes)");
    cmd->add_flag("--libcryptsetup", opts->libcryptsetup,
                  "Re-key each instance with libcryptsetup's re-encryption instead of the one-pass data path");
    cmd->add_option("--report", opts->report, "Write the JSON report to FILE ('-' = stdout)");
    cmd->add_flag("--json", opts->json, "Print the JSON report on stdout");
    set_action(*cmd, [opts] {
        StampOptions options;
        options.keep_holes = !opts->dense;
        options.one_pass = !opts->libcryptsetup;
        options.partition = partition_of(opts->partition);
        options.ledger = ledger_location(opts->ledger, opts->policy);
        options.drop_other_keyslots = opts->drop_other_keyslots;
        if (!opts->policy.empty()) {
            Policy policy = Policy::load(opts->policy);
            policy.require_valid();
            policy.require_no_tpm2("stamp");
            Policy::Pin pin = policy.pin();
            options.binding = PinBinding{pin.name, pin.config_json};
            options.policy = policy_source(opts->policy);
            options.max_instances_per_key = policy.max_instances_per_key;
            options.pin_options = policy.pin_options();
            options.keyslot_pbkdf = policy.keyslot_pbkdf;
        }
        options.on_instance = [](const std::filesystem::path& image, std::size_t index, std::size_t count) {
            std::fprintf(stderr, "stamp: %zu/%zu %s\n", index + 1, count, image.c_str());
        };
        StampReport report;
        try {
            report = stamp(opts->base, opts->count, opts->out, options);
        } catch (const LimitError& e) {
            std::fprintf(stderr, "luksforge: error: %s\n", e.what());
            return exit_shared_keys;
        }
        if (!opts->libcryptsetup && !report.data_path_note.empty())
            std::fprintf(stderr, "stamp: %s; used libcryptsetup re-encryption\n", report.data_path_note.c_str());
        write_report(opts->report, report.to_json());
        if (opts->json) print_json(report.to_json());
        return 0;
    });
}

void register_clone(CLI::App& app) {
    struct Options {
        std::string base, out, ledger, policy;
        int partition = 0;
        unsigned max_per_key = 0;
    };
    auto opts = std::make_shared<Options>();
    auto* cmd = app.add_subcommand(
        "clone", "Copy an image keeping its volume key, refused when the ledger already holds the allowed number");
    cmd->add_option("BASE", opts->base, "The image to copy")->required();
    cmd->add_option("OUT", opts->out, "The new image (must not exist)")->required();
    cmd->add_option("--ledger", opts->ledger, ledger_help);
    cmd->add_option("--policy", opts->policy, "Policy whose max_instances_per_key applies (default 1)");
    cmd->add_option("--max-per-key", opts->max_per_key, "Override the maximum images per volume key")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--partition", opts->partition, "The LUKS2 partition when there are several")
        ->check(CLI::PositiveNumber);
    set_action(*cmd, [opts] {
        CloneOptions options;
        options.partition = partition_of(opts->partition);
        options.ledger = ledger_location(opts->ledger, opts->policy);
        if (!opts->policy.empty()) {
            Policy policy = Policy::load(opts->policy);
            options.max_instances_per_key = policy.max_instances_per_key;
            options.policy = policy_source(opts->policy);
        }
        if (opts->max_per_key > 0) options.max_instances_per_key = opts->max_per_key;
        try {
            StampedInstance clone = clone_image(opts->base, opts->out, options);
            std::fprintf(stderr, "cloned %s to %s (volume key %s...)\n", opts->base.c_str(), clone.image.c_str(),
                         clone.fingerprint.substr(0, 16).c_str());
        } catch (const LimitError& e) {
            std::fprintf(stderr, "luksforge: error: %s\n", e.what());
            return exit_shared_keys;
        }
        return 0;
    });
}

void register_audit(CLI::App& app) {
    struct Options {
        std::vector<std::string> paths, tang_key_dirs;
        std::string ledger, policy;
        unsigned max_per_key = 0;
        bool json = false, recursive = false, strict = false, no_tang_keys = false;
    };
    auto opts = std::make_shared<Options>();
    auto* cmd = app.add_subcommand(
        "audit", "Group images and devices by volume-key fingerprint and flag keys shared beyond the limit");
    cmd->add_option("PATH", opts->paths,
                    "Image files, block devices or directories (their files are scanned); none with --ledger: "
                    "the ledger's shared keys alone");
    cmd->add_flag("--json", opts->json, "Print JSON");
    cmd->add_option("--max-per-key", opts->max_per_key, "Images allowed per volume key (default 1, or the policy's)")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--policy", opts->policy, "Take the limit from this policy's max_instances_per_key");
    cmd->add_option("--ledger", opts->ledger,
                    "Show what this ledger (file or postgresql:// URL) recorded for each key, and every key it "
                    "records more than once (all builders of a farm), scanned here or not");
    cmd->add_flag("-r,--recursive", opts->recursive, "Descend into subdirectories");
    cmd->add_option("--tang-key-dir", opts->tang_key_dirs,
                    "Host Tang key directory whose private keys bindings must not trust from the same place "
                    "(repeatable; default /var/db/tang and /var/cache/tang)");
    cmd->add_flag("--no-tang-key-scan", opts->no_tang_keys,
                  "Do not scan plaintext partitions for Tang private keys nor compare bindings with host keys");
    cmd->add_flag("--strict", opts->strict,
                  "Exit with code " + std::to_string(exit_shared_keys) + " when a key is shared beyond the limit, " +
                      std::to_string(exit_tang_keys_exposed) + " when Tang private keys are in an image or exposed");
    set_action(*cmd, [opts] {
        AuditOptions options;
        if (!opts->policy.empty()) options.max_per_key = Policy::load(opts->policy).max_instances_per_key;
        if (opts->max_per_key > 0) options.max_per_key = opts->max_per_key;
        if (!opts->ledger.empty()) options.ledger = opts->ledger;
        options.recursive = opts->recursive;
        options.scan_tang_keys = !opts->no_tang_keys;
        if (!opts->tang_key_dirs.empty())
            options.tang_key_dirs.assign(opts->tang_key_dirs.begin(), opts->tang_key_dirs.end());
        if (opts->paths.empty() && opts->ledger.empty())
            throw FormatError("audit needs a PATH, or --ledger for the ledger's shared keys");
        std::vector<std::filesystem::path> paths(opts->paths.begin(), opts->paths.end());
        AuditReport report = audit(paths, options);
        if (opts->json)
            print_json(report.to_json());
        else
            std::fputs(report.to_text().c_str(), stdout);
        if (!opts->strict) return 0;
        if (report.flagged_groups() > 0) return exit_shared_keys;
        if (!report.tang_keys_in_images.empty() || !report.tang_key_exposures.empty()) return exit_tang_keys_exposed;
        return 0;
    });
}

void register_ledger(CLI::App& app) {
    struct Options {
        std::string ledger, fingerprint;
        bool json = false;
    };
    auto opts = std::make_shared<Options>();
    auto* cmd = app.add_subcommand("ledger", "Show what the key ledger recorded (for operators)");
    cmd->require_subcommand(1);
    auto* list = cmd->add_subcommand("list", "List records (committed, reserved, or expired reservations)");
    list->add_option("--ledger", opts->ledger, ledger_help);
    list->add_option("--fingerprint", opts->fingerprint, "Only the records of this volume-key fingerprint");
    list->add_flag("--json", opts->json, "Print JSON");
    set_action(*list, [opts] {
        Ledger ledger = Ledger::open(ledger_location(opts->ledger, ""));
        std::optional<std::string> only;
        if (!opts->fingerprint.empty()) only = opts->fingerprint;
        const std::vector<LedgerRecord> records = ledger.records(only);
        if (opts->json) {
            print_json(ledger_records_json(records));
            return 0;
        }
        for (const LedgerRecord& r : records)
            std::printf("%-6lld %-9s %-16s %-20s %-8s %-16s %s\n", static_cast<long long>(r.id), r.state.c_str(),
                        r.fingerprint.substr(0, 16).c_str(), r.time.c_str(), r.event.c_str(),
                        r.host.empty() ? "-" : r.host.c_str(), r.image.c_str());
        return 0;
    });
    struct PruneOptions {
        std::vector<std::string> dirs;
        std::string ledger;
        bool dry_run = false, json = false;
    };
    auto prune_opts = std::make_shared<PruneOptions>();
    auto* prune = cmd->add_subcommand(
        "prune", "Drop this host's committed records whose image in DIR does not exist (a builder killed between "
                 "recording and publishing an image)");
    prune->add_option("DIR", prune_opts->dirs, "Output directories whose images stay where they were made")
        ->required();
    prune->add_option("--ledger", prune_opts->ledger, ledger_help);
    prune->add_flag("--dry-run", prune_opts->dry_run, "Only list what would be dropped");
    prune->add_flag("--json", prune_opts->json, "Print the records (dropped or, with --dry-run, to drop) as JSON");
    set_action(*prune, [prune_opts] {
        Ledger ledger = Ledger::open(ledger_location(prune_opts->ledger, ""));
        const std::vector<std::filesystem::path> dirs(prune_opts->dirs.begin(), prune_opts->dirs.end());
        const std::vector<LedgerRecord> dropped = prune_ledger(ledger, dirs, prune_opts->dry_run);
        if (prune_opts->json) {
            print_json(ledger_records_json(dropped));
            return 0;
        }
        for (const LedgerRecord& r : dropped)
            std::printf("%s %-6lld %-16s %s\n", prune_opts->dry_run ? "would drop" : "dropped",
                        static_cast<long long>(r.id), r.fingerprint.substr(0, 16).c_str(), r.image.c_str());
        return 0;
    });
    auto* exported = cmd->add_subcommand("export", "Every record as a JSON array (for backups and other tools)");
    exported->add_option("--ledger", opts->ledger, ledger_help);
    set_action(*exported, [opts] {
        Ledger ledger = Ledger::open(ledger_location(opts->ledger, ""));
        print_json(ledger_records_json(ledger.records()));
        return 0;
    });
}

}  // namespace

void register_image_commands(CLI::App& app) {
    register_ledger(app);
    register_probe(app);
    register_seal(app);
    register_stamp(app);
    register_clone(app);
    register_audit(app);
}

}  // namespace luksforge::cli
