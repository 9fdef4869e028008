// LUKS2 subcommands: format, inspect, add-key, remove-key, rekey, token list|export|import|remove.
#include "commands.hpp"
#include "common.hpp"

#include <luksforge/error.hpp>
#include <luksforge/image.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/policy.hpp>

#include <fmt/core.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace luksforge::cli {
namespace {

// PBKDF options shared by format and add-key.
struct PbkdfOptions {
    std::string type;
    std::uint32_t iterations = 0;
    std::uint32_t memory_kib = 0;
    std::uint32_t parallel = 0;
    std::uint32_t time_ms = 0;
    std::string hash;

    void add_to(CLI::App& cmd) {
        cmd.add_option("--pbkdf", type, "Key derivation: argon2id (default), argon2i or pbkdf2")
            ->check(CLI::IsMember({"argon2id", "argon2i", "pbkdf2"}));
        cmd.add_option("--pbkdf-iterations", iterations,
                       "pbkdf2 iterations or argon2 time cost; fixes the cost (no benchmark)")
            ->check(CLI::PositiveNumber);
        cmd.add_option("--pbkdf-memory", memory_kib, "argon2 memory cost in KiB")->check(CLI::PositiveNumber);
        cmd.add_option("--pbkdf-parallel", parallel, "argon2 threads")->check(CLI::PositiveNumber);
        cmd.add_option("--pbkdf-time", time_ms, "benchmark target in milliseconds when no iterations are given")
            ->check(CLI::PositiveNumber);
        cmd.add_option("--hash", hash, "pbkdf2 hash (default sha256)");
    }

    std::optional<Pbkdf> get() const {
        if (type.empty() && iterations == 0 && memory_kib == 0 && parallel == 0 && time_ms == 0 && hash.empty())
            return std::nullopt;
        Pbkdf pbkdf;
        pbkdf.type = Pbkdf::parse_type(type.empty() ? "argon2id" : type);
        if (!hash.empty()) pbkdf.hash = hash;
        pbkdf.iterations = iterations;
        pbkdf.memory_kib = memory_kib;
        pbkdf.parallel = parallel;
        pbkdf.time_ms = time_ms;
        if (pbkdf.type == Pbkdf::Type::pbkdf2 && (memory_kib != 0 || parallel != 0))
            throw FormatError("--pbkdf-memory and --pbkdf-parallel apply to argon2 only");
        return pbkdf;
    }
};

// While alive, SIGINT and SIGTERM only set a flag (polled by long operations); the old handlers come back after.
class InterruptGuard {
public:
    InterruptGuard() {
        flag() = 0;
        struct sigaction action {};
        action.sa_handler = [](int) { flag() = 1; };
        sigemptyset(&action.sa_mask);
        sigaction(SIGINT, &action, &old_int_);
        sigaction(SIGTERM, &action, &old_term_);
    }
    ~InterruptGuard() {
        sigaction(SIGINT, &old_int_, nullptr);
        sigaction(SIGTERM, &old_term_, nullptr);
    }
    InterruptGuard(const InterruptGuard&) = delete;
    InterruptGuard& operator=(const InterruptGuard&) = delete;
    static bool requested() { return flag() != 0; }

private:
    static volatile std::sig_atomic_t& flag() {
        static volatile std::sig_atomic_t value = 0;
        return value;
    }
    struct sigaction old_int_ {};
    struct sigaction old_term_ {};
};

// Two secrets cannot both come from one stdin.
void refuse_double_stdin(const std::vector<std::string>& files) {
    int stdin_uses = 0;
    for (const auto& f : files) stdin_uses += f == "-" ? 1 : 0;
    if (stdin_uses > 1) throw CLI::ValidationError("stdin (\"-\") can supply only one secret");
}

void print_inspection(const Inspection& info) {
    fmt::print("Device:          {}\n", info.path);
    fmt::print("UUID:            {}\n", info.uuid);
    fmt::print("Label:           {}\n", info.label.empty() ? "(none)" : info.label);
    fmt::print("Subsystem:       {}\n", info.subsystem.empty() ? "(none)" : info.subsystem);
    fmt::print("Cipher:          {} ({} bits)\n", info.cipher, info.volume_key_bytes * 8);
    fmt::print("Sector size:     {}\n", info.sector_size);
    fmt::print("Data offset:     {} bytes\n", info.data_offset_bytes);
    fmt::print("Metadata area:   {} bytes\n", info.metadata_bytes);
    fmt::print("Keyslots area:   {} bytes\n", info.keyslots_bytes);
    fmt::print("Device size:     {} bytes\n", info.device_bytes);
    fmt::print("Fingerprint:     {}\n", info.fingerprint);
    if (info.reencryption_in_progress) fmt::print("Re-encryption:   in progress (resume with luksforge rekey)\n");
    fmt::print("Keyslots:\n");
    for (const auto& slot : info.keyslots) {
        std::string pbkdf(Pbkdf::type_name(slot.pbkdf.type));
        if (slot.pbkdf.type == Pbkdf::Type::pbkdf2)
            pbkdf += fmt::format(" {} iterations={}", slot.pbkdf.hash, slot.pbkdf.iterations);
        else
            pbkdf += fmt::format(" time={} memory={}KiB parallel={}", slot.pbkdf.iterations, slot.pbkdf.memory_kib,
                                 slot.pbkdf.parallel);
        fmt::print("  {}: {}{} priority={} key={} bits\n", slot.id, pbkdf, slot.bound_to_segment ? "" : " (unbound)",
                   slot.priority, slot.key_bytes * 8);
    }
    fmt::print("Tokens:\n");
    for (const auto& token : info.tokens) {
        std::string slots;
        for (int s : token.keyslots) slots += (slots.empty() ? "" : ",") + std::to_string(s);
        fmt::print("  {}: {} keyslots=[{}]\n", token.id, token.type, slots);
    }
}

// A LUKS2 header with no keyslot at all and no token is what a format killed between writing the header and
// adding keyslot 0 leaves: nothing opens it, so nothing is lost by formatting again (rerunning the same command
// finishes the job). Any keyslot, token or LUKS1 header means a volume someone may still need.
bool is_interrupted_format(const std::string& image) {
    try {
        std::optional<Volume> volume = Volume::probe(image);
        return volume && volume->luks_version() == 2 && volume->keyslots().empty() && volume->tokens().empty();
    } catch (const Error&) {
        return false;
    }
}

// `.NAME.PID.partial` next to NAME: private to this process.
std::filesystem::path partial_path_for(const std::filesystem::path& image) {
    return image.parent_path() / ("." + image.filename().string() + "." + std::to_string(::getpid()) + ".partial");
}

// Leftovers of a format of `image` killed before its rename (their process is gone).
void remove_stale_partials_of(const std::filesystem::path& image) {
    const std::string prefix = "." + image.filename().string() + ".";
    std::error_code ec;
    const std::filesystem::path dir = image.parent_path().empty() ? std::filesystem::path(".") : image.parent_path();
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        if (!name.starts_with(prefix) || !name.ends_with(".partial")) continue;
        const std::string pid = name.substr(prefix.size(), name.size() - prefix.size() - 8);
        if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
        if (::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH) ::unlink(entry.path().c_str());
    }
}

// fsync the formatted file, rename it to `image` (never replacing one that appeared meanwhile), fsync the directory.
void publish_formatted_file(const std::filesystem::path& partial, const std::filesystem::path& image) {
    const int fd = ::open(partial.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::fsync(fd) != 0) {
        const int code = errno;
        if (fd >= 0) ::close(fd);
        ::unlink(partial.c_str());
        throw Error(code, "cannot sync " + partial.string() + ": " + std::strerror(code));
    }
    ::close(fd);
    if (::renameat2(AT_FDCWD, partial.c_str(), AT_FDCWD, image.c_str(), RENAME_NOREPLACE) != 0) {
        const int code = errno;
        ::unlink(partial.c_str());
        throw Error(code, "cannot rename " + partial.string() + " to " + image.string() + ": " + std::strerror(code));
    }
    const std::filesystem::path dir = image.parent_path().empty() ? std::filesystem::path(".") : image.parent_path();
    const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
        ::fsync(dir_fd);
        ::close(dir_fd);
    }
}

void register_format(CLI::App& app) {
    struct Options {
        std::string image;
        SecretOption passphrase;
        std::string size;
        PbkdfOptions pbkdf;
        std::string cipher = "aes-xts-plain64";
        std::uint32_t key_bits = 512;
        std::uint32_t sector_size = 0;
        std::string label, subsystem, uuid;
        std::string metadata_size, keyslots_size;
        std::string policy;
        bool json = false;
        bool force = false;
    };
    auto o = std::make_shared<Options>();
    auto* cmd = app.add_subcommand("format", "Format IMAGE as LUKS2 with a fresh volume key and one passphrase keyslot");
    cmd->add_option("IMAGE", o->image, "Image file, partition or loop device")->required();
    add_secret_option(*cmd, o->passphrase, "passphrase", "Passphrase of the first keyslot", true);
    cmd->add_option("--size", o->size, "Create or extend IMAGE (a regular file) to SIZE first, e.g. 64M, 2G")
        ->check(size_validator());
    o->pbkdf.add_to(*cmd);
    cmd->add_option("--cipher", o->cipher, "Data cipher (default aes-xts-plain64)");
    cmd->add_option("--key-size", o->key_bits, "Volume key size in bits (default 512)")->check(CLI::PositiveNumber);
    cmd->add_option("--sector-size", o->sector_size, "Encryption sector size (default 4096 where the device allows)")
        ->check(CLI::IsMember({512, 1024, 2048, 4096}));
    cmd->add_option("--label", o->label, "LUKS2 label");
    cmd->add_option("--subsystem", o->subsystem, "LUKS2 subsystem");
    cmd->add_option("--uuid", o->uuid, "UUID (default random)");
    cmd->add_option("--metadata-size", o->metadata_size, "LUKS2 metadata area size (16K..4M, a power of two)")
        ->check(size_validator());
    cmd->add_option("--keyslots-size", o->keyslots_size, "LUKS2 keyslots area size")->check(size_validator());
    auto* policy = cmd->add_option("--policy", o->policy,
                                   "Take cipher, key size and LUKS2 metadata/keyslots sizes from a deployment policy "
                                   "(docs/policy.md); the metadata then holds the policy's Clevis token");
    for (const char* name : {"--cipher", "--key-size", "--metadata-size", "--keyslots-size"}) policy->excludes(name);
    cmd->add_flag("--json", o->json, "Print the inspection as JSON");
    cmd->add_flag("--force", o->force,
                  "Overwrite IMAGE even when it already holds a LUKS volume, a filesystem or a partition table");
    set_action(*cmd, [o] {
        // Like cryptsetup's confirmation prompt, but scriptable: never destroy recognisable data unasked.
        std::error_code ec;
        if (!o->force && std::filesystem::exists(o->image, ec))
            if (const auto content = detect_content(o->image); content && !is_interrupted_format(o->image))
                throw FormatError(o->image + " already holds " + *content +
                                  "; luksforge format would destroy it (pass --force to overwrite)");
        FormatOptions options;
        const auto dash = o->cipher.find('-');
        if (dash == std::string::npos || dash == 0 || dash + 1 == o->cipher.size())
            throw FormatError("--cipher must look like aes-xts-plain64");
        options.cipher = o->cipher.substr(0, dash);
        options.cipher_mode = o->cipher.substr(dash + 1);
        if (o->key_bits % 8 != 0) throw FormatError("--key-size must be a multiple of 8 bits");
        options.volume_key_bytes = o->key_bits / 8;
        options.sector_size = o->sector_size;
        options.pbkdf = o->pbkdf.get();
        options.label = o->label;
        options.subsystem = o->subsystem;
        if (!o->uuid.empty()) options.uuid = o->uuid;
        if (!o->metadata_size.empty()) options.metadata_bytes = parse_size(o->metadata_size);
        if (!o->keyslots_size.empty()) options.keyslots_bytes = parse_size(o->keyslots_size);
        if (!o->policy.empty()) {
            // The policy decides cipher and sizes; the passphrase keyslot keeps this command's PBKDF.
            const Policy policy = Policy::load(o->policy);
            policy.require_valid();
            const FormatOptions from_policy = policy.format_options();
            options.cipher = from_policy.cipher;
            options.cipher_mode = from_policy.cipher_mode;
            options.volume_key_bytes = from_policy.volume_key_bytes;
            options.metadata_bytes = from_policy.metadata_bytes;
            options.keyslots_bytes = from_policy.keyslots_bytes;
        }
        SecretBuffer passphrase = o->passphrase.read();
        if (passphrase.empty()) throw FormatError("the passphrase is empty");
        // A new file is made whole under a hidden name and renamed into place: killed before, there is no
        // half-formatted IMAGE (the next format of it removes the leftover); an existing file or device is
        // formatted in place (a rerun finishes a volume left without keyslot 0, see is_interrupted_format).
        std::error_code exists_ec;
        const bool create = !o->size.empty() && !std::filesystem::exists(o->image, exists_ec);
        const std::filesystem::path target = create ? partial_path_for(o->image) : std::filesystem::path(o->image);
        if (create) remove_stale_partials_of(o->image);
        if (!o->size.empty()) Volume::ensure_file_size(target, parse_size(o->size));
        Volume volume = Volume::format(target, options);
        const int slot = volume.add_keyslot_by_volume_key(passphrase.view(), options.pbkdf);
        Inspection info = volume.inspect();
        if (create) {
            publish_formatted_file(target, o->image);
            info.path = o->image;  // inspected under its hidden name
        }
        if (o->json) {
            print_json(info.to_json());
        } else {
            fmt::print("Formatted {} as LUKS2 (UUID {}), passphrase in keyslot {}\n", o->image, info.uuid, slot);
            fmt::print("Fingerprint: {}\n", info.fingerprint);
        }
        return 0;
    });
}

void register_inspect(CLI::App& app) {
    struct Options {
        std::string image;
        bool json = false;
    };
    auto o = std::make_shared<Options>();
    auto* cmd = app.add_subcommand("inspect", "Show a LUKS2 header: keyslots, tokens and volume-key fingerprint");
    cmd->add_option("IMAGE", o->image, "Image file, partition or loop device")->required();
    cmd->add_flag("--json", o->json, "Print JSON");
    set_action(*cmd, [o] {
        const Inspection info = Volume::open(o->image, Volume::Access::read_only).inspect();
        if (o->json) print_json(info.to_json());
        else print_inspection(info);
        return 0;
    });
}

void register_add_key(CLI::App& app) {
    struct Options {
        std::string image;
        SecretOption passphrase;
        SecretOption new_passphrase;
        int slot = -1;
        PbkdfOptions pbkdf;
        bool json = false;
    };
    auto o = std::make_shared<Options>();
    auto* cmd = app.add_subcommand("add-key", "Add a passphrase keyslot, unlocking with an existing passphrase");
    cmd->add_option("IMAGE", o->image, "LUKS2 image or device")->required();
    add_secret_option(*cmd, o->passphrase, "passphrase", "An existing passphrase", true);
    add_secret_option(*cmd, o->new_passphrase, "new-passphrase", "The passphrase to add", true);
    cmd->add_option("--key-slot", o->slot, "Keyslot number for the new passphrase (default: first free)")
        ->check(CLI::Range(0, 31));
    o->pbkdf.add_to(*cmd);
    cmd->add_flag("--json", o->json, "Print {\"keyslot\": N}");
    set_action(*cmd, [o] {
        refuse_double_stdin({o->passphrase.file, o->new_passphrase.file});
        Volume volume = Volume::open(o->image);
        SecretBuffer existing = o->passphrase.read();
        SecretBuffer added = o->new_passphrase.read("new passphrase");
        if (added.empty()) throw FormatError("the new passphrase is empty");
        const int slot = volume.add_keyslot(existing.view(), added.view(), o->pbkdf.get(), o->slot);
        if (o->json) print_json(fmt::format("{{\"keyslot\": {}}}", slot));
        else fmt::print("Added keyslot {}\n", slot);
        return 0;
    });
}

void register_remove_key(CLI::App& app) {
    struct Options {
        std::string image;
        int slot = -1;
        SecretOption passphrase;
        bool force = false;
    };
    auto o = std::make_shared<Options>();
    auto* cmd = app.add_subcommand("remove-key", "Remove a keyslot (by number, or the one a passphrase opens)");
    cmd->add_option("IMAGE", o->image, "LUKS2 image or device")->required();
    auto* slot = cmd->add_option("--key-slot", o->slot, "Keyslot to remove")->check(CLI::Range(0, 31));
    add_secret_option(*cmd, o->passphrase, "passphrase", "Remove the keyslot this passphrase opens");
    cmd->add_flag("--force", o->force, "Allow removing the last keyslot (the data becomes unrecoverable)");
    (void)slot;
    set_action(*cmd, [o] {
        Volume volume = Volume::open(o->image);
        int target = o->slot;
        if (o->passphrase.given()) {
            SecretBuffer passphrase = o->passphrase.read();
            const auto opened = volume.test_passphrase(passphrase.view(), o->slot);
            if (!opened) throw AuthError("the passphrase opens no keyslot" +
                                         (o->slot >= 0 ? " " + std::to_string(o->slot) : std::string()) + " of " + o->image);
            target = *opened;
        }
        if (target < 0) throw CLI::RequiredError("--key-slot or --passphrase-file");
        if (!volume.keyslot(target)) throw NotFoundError("keyslot " + std::to_string(target) + " does not exist in " + o->image);
        if (volume.keyslots().size() == 1 && !o->force)
            throw FormatError("keyslot " + std::to_string(target) + " is the last one; removing it loses the data (use --force)");
        volume.remove_keyslot(target);
        fmt::print("Removed keyslot {}\n", target);
        return 0;
    });
}

void register_rekey(CLI::App& app) {
    struct Options {
        std::string image;
        std::vector<std::string> passphrase_files;
        bool drop_others = false;
        std::string cipher;
        std::string hotzone;
        bool json = false;
    };
    auto o = std::make_shared<Options>();
    auto* cmd = app.add_subcommand(
        "rekey", "Replace the volume key by offline re-encryption; keyslots of the given passphrases survive");
    cmd->add_option("IMAGE", o->image, "LUKS2 image or device (not in use)")->required();
    add_secret_files_option(*cmd, o->passphrase_files, "passphrase", "A passphrase whose keyslot survives", true);
    cmd->add_flag("--drop-other-keyslots", o->drop_others, "Remove keyslots no given passphrase opens");
    cmd->add_option("--cipher", o->cipher, "New data cipher (default: keep)");
    cmd->add_option("--hotzone-size", o->hotzone, "Largest chunk re-encrypted between header updates (default: libcryptsetup's)")
        ->check(size_validator());
    cmd->add_flag("--json", o->json, "Print old/new fingerprints and the keyslot map as JSON");
    set_action(*cmd, [o] {
        refuse_double_stdin(o->passphrase_files);
        std::vector<SecretBuffer> secrets;
        for (const auto& file : o->passphrase_files) secrets.push_back(read_secret_file(file));
        std::vector<std::string_view> views;
        for (const auto& s : secrets) views.push_back(s.view());
        RekeyOptions options;
        options.drop_other_keyslots = o->drop_others;
        if (!o->cipher.empty()) {
            const auto dash = o->cipher.find('-');
            if (dash == std::string::npos) throw FormatError("--cipher must look like aes-xts-plain64");
            options.cipher = o->cipher.substr(0, dash);
            options.cipher_mode = o->cipher.substr(dash + 1);
        }
        if (!o->hotzone.empty()) options.max_hotzone_bytes = parse_size(o->hotzone);
        ProgressBar bar("Re-encrypting");
        // Ctrl-C / SIGTERM pause re-encryption between two chunks, leaving a clean, resumable header instead
        // of one that needs crash recovery.
        const InterruptGuard interrupt;
        options.progress = [&bar](const RekeyProgress& p) {
            bar.update(p.done_bytes, p.total_bytes);
            return !InterruptGuard::requested();
        };
        Volume volume = Volume::open(o->image);
        const RekeyResult result = volume.rekey(views, options);
        if (!result.completed) {
            throw Error(EINTR, "re-encryption of " + o->image + " interrupted; run luksforge rekey again to resume");
        }
        bar.finish();
        if (o->json) {
            std::string map;
            for (auto [from, to] : result.keyslot_map)
                map += fmt::format("{}{{\"old\": {}, \"new\": {}}}", map.empty() ? "" : ", ", from, to);
            print_json(fmt::format("{{\"old_fingerprint\": \"{}\", \"new_fingerprint\": \"{}\", \"keyslots\": [{}], "
                                   "\"completed\": {}}}",
                                   result.old_fingerprint, result.new_fingerprint, map, result.completed));
        } else {
            fmt::print("Re-keyed {}\n", o->image);
            fmt::print("Old fingerprint: {}\nNew fingerprint: {}\n", result.old_fingerprint, result.new_fingerprint);
            for (auto [from, to] : result.keyslot_map) fmt::print("Keyslot {} -> {}\n", from, to);
        }
        return 0;
    });
}

void register_token(CLI::App& app) {
    auto* token = app.add_subcommand("token", "Manage LUKS2 tokens (list, export, import, remove)");
    token->require_subcommand(1);

    struct Options {
        std::string image;
        int id = -1;
        std::string json_file = "-";
        std::vector<int> keyslots;
        bool json = false;
    };
    auto o = std::make_shared<Options>();

    auto* list = token->add_subcommand("list", "List tokens");
    list->add_option("IMAGE", o->image, "LUKS2 image or device")->required();
    list->add_flag("--json", o->json, "Print JSON");
    set_action(*list, [o] {
        const auto tokens = Volume::open(o->image, Volume::Access::read_only).tokens();
        if (o->json) {
            std::string out = "[";
            for (const auto& t : tokens) out += (out.size() > 1 ? ", " : "") + t.json;
            print_json(out + "]");
        } else {
            for (const auto& t : tokens) {
                std::string slots;
                for (int s : t.keyslots) slots += (slots.empty() ? "" : ",") + std::to_string(s);
                fmt::print("{}: {} keyslots=[{}]\n", t.id, t.type, slots);
            }
        }
        return 0;
    });

    auto* exp = token->add_subcommand("export", "Print one token's JSON");
    exp->add_option("IMAGE", o->image, "LUKS2 image or device")->required();
    exp->add_option("--token-id", o->id, "Token number")->required()->check(CLI::Range(0, 31));
    set_action(*exp, [o] {
        const auto t = Volume::open(o->image, Volume::Access::read_only).token(o->id);
        if (!t) throw NotFoundError("token " + std::to_string(o->id) + " does not exist in " + o->image);
        print_json(t->json);
        return 0;
    });

    auto* imp = token->add_subcommand("import", "Store token JSON (from --json-file, default stdin)");
    imp->add_option("IMAGE", o->image, "LUKS2 image or device")->required();
    imp->add_option("--json-file", o->json_file, "File with the token JSON (\"-\" = stdin)");
    imp->add_option("--token-id", o->id, "Token number (default: first free; replaces an existing one)")
        ->check(CLI::Range(0, 31));
    imp->add_option("--key-slot", o->keyslots, "Also assign the token to this keyslot (repeatable)");
    set_action(*imp, [o] {
        Volume volume = Volume::open(o->image);
        // Token JSON is public header data, but read it like a secret: exact bytes, size cap, stdin allowed.
        SecretBuffer text = read_secret_file(o->json_file, 4 << 20);
        const int id = volume.set_token(text.view(), o->id);
        for (int slot : o->keyslots) volume.assign_token(id, slot);
        fmt::print("Imported token {}\n", id);
        return 0;
    });

    auto* rem = token->add_subcommand("remove", "Remove a token");
    rem->add_option("IMAGE", o->image, "LUKS2 image or device")->required();
    rem->add_option("--token-id", o->id, "Token number")->required()->check(CLI::Range(0, 31));
    set_action(*rem, [o] {
        Volume::open(o->image).remove_token(o->id);
        fmt::print("Removed token {}\n", o->id);
        return 0;
    });
}

}  // namespace

void register_luks_commands(CLI::App& app) {
    register_format(app);
    register_inspect(app);
    register_add_key(app);
    register_remove_key(app);
    register_rekey(app);
    register_token(app);
}

}  // namespace luksforge::cli
