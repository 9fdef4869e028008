// The image pipeline: seal (crash-safe re-key + bind + verify + drop the build passphrase), stamp (unique
// instances of a sealed base), clone (key-sharing copies under the ledger's limit) and sparse copies.
#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/image.hpp>
#include <luksforge/ledger.hpp>
#include <luksforge/pipeline.hpp>
#include <luksforge/tang.hpp>

#include "util/digest.hpp"
#include "util/json_util.hpp"

#include <openssl/evp.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

namespace luksforge {

using detail::JsonPtr;
using detail::sha256_hex;
using detail::json_take;

namespace {

// --- small helpers --------------------------------------------------------------------------------------------

std::string absolute_string(const std::filesystem::path& path) {
    std::error_code ec;
    auto absolute = std::filesystem::absolute(path, ec);
    return (ec ? path : absolute.lexically_normal()).string();
}

// The ledger's name for a volume: the image's absolute path, plus " partition N" for a partition of it.
std::string ledger_image_name(const std::filesystem::path& image, std::optional<int> partition) {
    std::string name = absolute_string(image);
    if (partition) name += " partition " + std::to_string(*partition);
    return name;
}

std::string ledger_image_name(const LuksTarget& target) { return ledger_image_name(target.image, target.partition); }

LedgerRecord ledger_record(std::string fingerprint, std::string image, std::string uuid, const PolicySource& policy,
                           std::string event) {
    LedgerRecord record;
    record.fingerprint = std::move(fingerprint);
    record.image = std::move(image);
    record.uuid = std::move(uuid);
    record.policy_path = policy.path.string();
    record.policy_hash = policy.sha256;
    record.event = std::move(event);
    return record;
}

class Stopwatch {
public:
    double seconds() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }

private:
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// The test-only crash hook (see pipeline.hpp).
void crash_point(const char* step) {
    const char* wanted = std::getenv("LUKSFORGE_CRASH_AT");
    if (wanted != nullptr && std::strcmp(wanted, step) == 0) ::kill(::getpid(), SIGKILL);
}

void fsync_directory(const std::filesystem::path& directory) {
    int fd = ::open(directory.empty() ? "." : directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

// --- reading bindings -----------------------------------------------------------------------------------------

JsonPtr protected_header(std::string_view compact_jwe) {
    std::size_t dot = compact_jwe.find('.');
    if (dot == std::string_view::npos) throw FormatError("malformed JWE: no protected header");
    SecretBuffer decoded = base64url_decode(compact_jwe.substr(0, dot));
    return detail::json_parse(decoded.view(), "JWE protected header");
}

const json_t* clevis_member(const json_t* header, std::string& pin) {
    const json_t* clevis = json_object_get(header, "clevis");
    pin = detail::json_string_or(clevis, "pin");
    if (pin.empty()) throw FormatError("JWE without a clevis pin");
    return json_object_get(clevis, pin.c_str());
}

void collect_servers(std::string_view compact_jwe, std::vector<TangServer>& servers, int depth = 0) {
    if (depth > 8) throw FormatError("sss pins nested too deeply");
    JsonPtr header = protected_header(compact_jwe);
    std::string pin;
    const json_t* config = clevis_member(header.get(), pin);
    if (pin == "tang") {
        TangServer server;
        server.url = detail::json_string_or(config, "url");
        server.exchange_thumbprint = detail::json_string_or(header.get(), "kid");
        const json_t* keys = json_object_get(json_object_get(config, "adv"), "keys");
        std::size_t i = 0;
        const json_t* key = nullptr;
        json_array_foreach(keys, i, key) {
            const json_t* ops = json_object_get(key, "key_ops");
            std::size_t j = 0;
            const json_t* op = nullptr;
            bool verify = false;
            json_array_foreach(ops, j, op) verify = verify || (json_is_string(op) && std::strcmp(json_string_value(op), "verify") == 0);
            if (verify) server.signing_thumbprints.push_back(tang::jwk_thumbprint(detail::json_dump(key), "S256"));
        }
        servers.push_back(std::move(server));
    } else if (pin == "sss") {
        const json_t* children = json_object_get(config, "jwe");
        std::size_t i = 0;
        const json_t* child = nullptr;
        json_array_foreach(children, i, child) {
            if (json_is_string(child)) collect_servers(json_string_value(child), servers, depth + 1);
        }
    }
}

// The configuration that binds to the same servers and advertisements as `compact_jwe` did: tang as
// {"url":..., "adv":{keys}} (the advertisement the base was bound with, trusted as Clevis trusts an offline
// one), sss rebuilt from its children.
std::pair<std::string, JsonPtr> config_from_jwe(std::string_view compact_jwe, int depth = 0) {
    if (depth > 8) throw FormatError("sss pins nested too deeply");
    JsonPtr header = protected_header(compact_jwe);
    std::string pin;
    const json_t* config = clevis_member(header.get(), pin);
    JsonPtr out = json_take(json_object());
    if (pin == "tang") {
        json_object_set_new(out.get(), "url", json_string(detail::json_string_or(config, "url").c_str()));
        const json_t* adv = json_object_get(config, "adv");
        if (!json_is_object(adv)) throw FormatError("tang JWE without an advertisement");
        json_object_set_new(out.get(), "adv", json_deep_copy(adv));
    } else if (pin == "sss") {
        json_object_set_new(out.get(), "t", json_integer(json_integer_value(json_object_get(config, "t"))));
        json_t* pins = json_object();
        json_object_set_new(out.get(), "pins", pins);
        std::size_t i = 0;
        const json_t* child = nullptr;
        json_array_foreach(json_object_get(config, "jwe"), i, child) {
            if (!json_is_string(child)) throw FormatError("sss JWE with a non-string child");
            auto [child_pin, child_config] = config_from_jwe(json_string_value(child), depth + 1);
            json_t* list = json_object_get(pins, child_pin.c_str());
            if (list == nullptr) {
                list = json_array();
                json_object_set_new(pins, child_pin.c_str(), list);
            }
            json_array_append(list, child_config.get());
        }
    } else {
        throw FormatError("cannot rebuild a binding of pin \"" + pin + "\"; pass a policy");
    }
    return {pin, std::move(out)};
}

std::optional<Token> clevis_token_for(const Volume& volume, int keyslot) {
    for (auto& token : volume.tokens())
        if (token.type == "clevis" && std::find(token.keyslots.begin(), token.keyslots.end(), keyslot) != token.keyslots.end())
            return token;
    return std::nullopt;
}

// --- the seal state record in the header ----------------------------------------------------------------------

constexpr const char* seal_token_type = "luksforge-seal";

struct SealState {
    int token = -1;
    std::string step;                 // "rekey", "bind", "verify", "remove-build-passphrase"
    std::string fingerprint_before;
    std::string started_at;
    std::optional<int> pending_keyslot;
};

std::optional<SealState> read_state(const Volume& volume) {
    for (const Token& token : volume.tokens()) {
        if (token.type != seal_token_type) continue;
        JsonPtr json = detail::json_parse(token.json, "seal state token");
        SealState state;
        state.token = token.id;
        state.step = detail::json_string_or(json.get(), "step");
        state.fingerprint_before = detail::json_string_or(json.get(), "fingerprint_before");
        state.started_at = detail::json_string_or(json.get(), "started_at");
        const json_t* pending = json_object_get(json.get(), "pending_keyslot");
        if (json_is_integer(pending)) state.pending_keyslot = static_cast<int>(json_integer_value(pending));
        return state;
    }
    return std::nullopt;
}

// One atomic LUKS2 header write.
void write_state(Volume& volume, SealState& state) {
    JsonPtr json = json_take(json_object());
    json_object_set_new(json.get(), "type", json_string(seal_token_type));
    json_object_set_new(json.get(), "keyslots", json_array());
    json_object_set_new(json.get(), "version", json_integer(1));
    json_object_set_new(json.get(), "step", json_string(state.step.c_str()));
    json_object_set_new(json.get(), "fingerprint_before", json_string(state.fingerprint_before.c_str()));
    json_object_set_new(json.get(), "started_at", json_string(state.started_at.c_str()));
    if (state.pending_keyslot) json_object_set_new(json.get(), "pending_keyslot", json_integer(*state.pending_keyslot));
    state.token = volume.set_token(detail::json_dump(json.get()), state.token);
}

int first_free_keyslot(const Volume& volume) {
    std::vector<int> used;
    for (const Keyslot& slot : volume.keyslots()) used.push_back(slot.id);
    for (int id = 0; id < 32; ++id)
        if (std::find(used.begin(), used.end(), id) == used.end()) return id;
    throw FormatError("no free keyslot in " + volume.path().string());
}

void rekey_to_completion(Volume& volume, const std::vector<std::string_view>& passphrases, bool drop_others,
                         const std::function<void(std::uint64_t, std::uint64_t)>& on_progress, bool crash_hook,
                         std::uint64_t hotzone_bytes = 0) {
    RekeyOptions options;
    options.drop_other_keyslots = drop_others;
    options.drop_orphaned_tokens = true;  // a dropped keyslot's token opens nothing
    options.max_hotzone_bytes = hotzone_bytes;
    if (crash_hook && hotzone_bytes == 0) {
        const char* wanted = std::getenv("LUKSFORGE_CRASH_AT");
        if (wanted != nullptr && std::strcmp(wanted, "rekey-progress") == 0) options.max_hotzone_bytes = 4 << 20;
    }
    options.progress = [&](const RekeyProgress& p) {
        if (on_progress) on_progress(p.done_bytes, p.total_bytes);
        if (crash_hook && p.done_bytes > 0 && p.done_bytes < p.total_bytes) crash_point("rekey-progress");
        return true;
    };
    for (int round = 0; round < 1000; ++round)
        if (volume.rekey(passphrases, options).completed) return;
    throw Error(EIO, "re-encryption of " + volume.path().string() + " does not finish");
}

// Clevis tokens whose keyslots are all gone (e.g. dropped by a re-key) open nothing: remove them.
void remove_dead_clevis_tokens(Volume& volume) {
    for (const Token& token : volume.tokens()) {
        if (token.type != "clevis") continue;
        bool alive = std::any_of(token.keyslots.begin(), token.keyslots.end(),
                                 [&](int slot) { return volume.keyslot(slot).has_value(); });
        if (!alive) volume.remove_token(token.id);
    }
}

void fill_binding_report(SealReport& report, const Volume& volume, int keyslot) {
    report.keyslot = keyslot;
    if (auto token = clevis_token_for(volume, keyslot)) {
        report.token = token->id;
        std::string compact = clevis::token_to_compact(token->json);
        auto [pin, config] = clevis::describe_jwe(compact);
        report.pin = pin;
        report.pin_config = config;
        report.servers.clear();
        collect_servers(compact, report.servers);
    }
}

}  // namespace

// --- policy source ----------------------------------------------------------------------------------------------

PolicySource policy_source(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw NotFoundError("cannot read policy " + path.string());
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return {std::filesystem::path(absolute_string(path)), sha256_hex(bytes)};
}

// --- seal -------------------------------------------------------------------------------------------------------

std::vector<std::string> seal_crash_points() {
    return {"rekey-start", "rekey-progress", "rekey-done",          "bind-start",   "bind-keyslot-added",
            "bind-done",   "verify-done",    "build-token-removed", "build-removed"};
}

SealReport seal(const std::filesystem::path& image, const SecretBuffer& build_passphrase, const SealOptions& options) {
    if (options.binding.pin.empty()) throw FormatError("seal needs a pin to bind (from the policy)");
    const LuksTarget target = select_luks_target(image, options.partition);
    // Held for the whole seal: no other luksforge process touches the image meanwhile.
    DeviceLock image_lock = DeviceLock::acquire(image);
    AttachedTarget attached = AttachedTarget::attach(target);
    Volume volume = Volume::open(attached.device());

    SealReport report;
    report.image = absolute_string(image);
    report.partition = target.partition;
    report.policy = options.policy;
    report.uuid = volume.inspect().uuid;
    const auto step_started = [&](const char* name) {
        if (options.on_step) options.on_step(name);
    };

    std::optional<SealState> state = read_state(volume);
    if (!state) {
        if (!volume.test_passphrase(build_passphrase.view())) {
            // Nothing in progress and the build passphrase is gone: sealed before, if a binding opens it.
            if (clevis::list(volume).empty())
                throw AuthError("the build passphrase opens no keyslot of " + target.describe() +
                                " and it carries no Clevis binding");
            Stopwatch watch;
            clevis::Unlocked unlocked = clevis::unlock(volume, std::nullopt, options.pin_options);
            report.timings_seconds.emplace_back("verify", watch.seconds());
            report.already_sealed = true;
            report.fingerprint_before = report.fingerprint_after = volume.fingerprint();
            fill_binding_report(report, volume, unlocked.keyslot);
            report.checks_passed.push_back("binding of keyslot " + std::to_string(unlocked.keyslot) +
                                           " opens the volume through Tang");
            report.checks_passed.push_back("build passphrase opens no keyslot");
            report.finished_at = utc_timestamp();
            return report;
        }
        state = SealState{};
        state->step = "rekey";
        state->fingerprint_before = volume.fingerprint();
        state->started_at = utc_timestamp();
        write_state(volume, *state);
    } else {
        report.resumed_from = state->step;
    }
    report.fingerprint_before = state->fingerprint_before;

    // 1. A fresh volume key. Rekey resumes an interrupted re-encryption itself.
    if (state->step == "rekey") {
        step_started("rekey");
        crash_point("rekey-start");
        Stopwatch watch;
        const bool in_progress = volume.inspect().reencryption_in_progress;
        if (in_progress || volume.fingerprint() == state->fingerprint_before) {
            if (!in_progress) {
                // Unbound keyslots of a re-key that was interrupted before its re-encryption started.
                for (const Keyslot& slot : volume.keyslots())
                    if (!slot.bound_to_segment) volume.remove_keyslot_and_tokens(slot.id);
            }
            rekey_to_completion(volume, {build_passphrase.view()}, true, options.on_progress, true,
                                options.rekey_hotzone_bytes);
        }
        crash_point("rekey-done");
        remove_dead_clevis_tokens(volume);
        if (volume.fingerprint() == state->fingerprint_before)
            throw Error(EIO, "re-keying " + target.describe() + " left the volume key unchanged");
        report.timings_seconds.emplace_back("rekey", watch.seconds());
        state->step = "bind";
        state->pending_keyslot.reset();
        write_state(volume, *state);
    }

    // 2. Bind the policy's pin to a new keyslot. The slot is recorded before it is created, so a keyslot left
    //    without its token by a crash is recognised and removed.
    if (state->step == "bind") {
        step_started("bind");
        Stopwatch watch;
        if (state->pending_keyslot) {
            const int slot = *state->pending_keyslot;
            const bool has_slot = volume.keyslot(slot).has_value();
            const std::optional<Token> token = clevis_token_for(volume, slot);
            if (has_slot && !token) {
                volume.remove_keyslot_and_tokens(slot);
                report.checks_passed.push_back("removed keyslot " + std::to_string(slot) +
                                               " orphaned by an interrupted bind");
            } else if (!has_slot && token) {
                volume.remove_token(token->id);
            } else if (has_slot && token) {
                state->step = "verify";
            }
        }
        if (state->step == "bind") {
            const int slot = first_free_keyslot(volume);
            state->pending_keyslot = slot;
            write_state(volume, *state);
            crash_point("bind-start");
            SecretBuffer passphrase = base64url_encode(random_secret(40).bytes());
            // Encrypt first: a network or trust failure leaves the header as it was.
            const std::string jwe =
                clevis_encrypt(options.binding.pin, options.binding.config_json, passphrase.bytes(), options.pin_options);
            volume.add_keyslot(build_passphrase.view(), passphrase.view(), options.keyslot_pbkdf, slot);
            crash_point("bind-keyslot-added");
            try {
                volume.set_token(clevis::token_json(slot, jwe));
            } catch (...) {
                try {
                    volume.remove_keyslot_and_tokens(slot);
                } catch (...) {
                }
                throw;
            }
            crash_point("bind-done");
            state->step = "verify";
        }
        report.timings_seconds.emplace_back("bind", watch.seconds());
        write_state(volume, *state);
    }

    // 3. Prove through the real servers that the binding opens its keyslot.
    bool verified_here = false;
    if (state->step == "verify") {
        step_started("verify");
        Stopwatch watch;
        if (!state->pending_keyslot) throw FormatError("seal state of " + target.describe() + " lost its keyslot");
        const int slot = *state->pending_keyslot;
        try {
            clevis::Unlocked unlocked = clevis::unlock(volume, slot, options.pin_options);
            if (unlocked.keyslot != slot || volume.test_passphrase(unlocked.passphrase.view(), slot) != slot)
                throw AuthError("the recovered passphrase does not open keyslot " + std::to_string(slot));
        } catch (const TangError&) {
            throw;  // servers unreachable: keep the binding; rerunning seal verifies again
        } catch (const Error& e) {
            // The binding is broken: roll it back to "bind" so a rerun makes a new one.
            if (auto token = clevis_token_for(volume, slot)) volume.remove_token(token->id);
            if (volume.keyslot(slot)) volume.remove_keyslot_and_tokens(slot);
            state->step = "bind";
            state->pending_keyslot.reset();
            write_state(volume, *state);
            throw AuthError(std::string("verification failed, binding removed (the build passphrase still opens ") +
                            target.describe() + "): " + e.what());
        }
        report.checks_passed.push_back("passphrase recovered through Tang opens keyslot " + std::to_string(slot));
        report.timings_seconds.emplace_back("verify", watch.seconds());
        verified_here = true;
        crash_point("verify-done");
        state->step = "remove-build-passphrase";
        write_state(volume, *state);
    }

    // 4. Only now drop the build passphrase, then the state record.
    if (state->step != "remove-build-passphrase")
        throw FormatError("unknown seal step \"" + state->step + "\" in " + target.describe());
    step_started("remove-build-passphrase");
    Stopwatch watch;
    const int slot = state->pending_keyslot.value_or(-1);
    if (!volume.keyslot(slot) || !clevis_token_for(volume, slot))
        throw FormatError("seal state of " + target.describe() + " names keyslot " + std::to_string(slot) +
                          " but it has no binding; refusing to remove the build passphrase");
    if (!verified_here) {
        // Verified by an earlier, interrupted run: prove it again before the build passphrase goes.
        clevis::Unlocked unlocked = clevis::unlock(volume, slot, options.pin_options);
        if (unlocked.keyslot != slot) throw AuthError("the binding does not open keyslot " + std::to_string(slot));
        report.checks_passed.push_back("passphrase recovered through Tang opens keyslot " + std::to_string(slot));
    }
    while (std::optional<int> build_slot = volume.test_passphrase(build_passphrase.view())) {
        if (*build_slot == slot) throw AuthError("the build passphrase opens the binding's own keyslot");
        // The build keyslot may carry a token of its own (e.g. a kickstart's `clevis luks bind`, whose
        // recovered passphrase is the build passphrase): it goes first, so neither a finished nor an
        // interrupted seal leaves a token assigned to no keyslot. A rerun after a crash between the two
        // writes finds the build keyslot still open and removes it.
        for (int token : volume.remove_tokens_only_of(*build_slot))
            report.checks_passed.push_back("removed token " + std::to_string(token) + " of build keyslot " +
                                           std::to_string(*build_slot));
        crash_point("build-token-removed");
        volume.remove_keyslot(*build_slot);
        report.removed_keyslots.push_back(*build_slot);
        crash_point("build-removed");
    }
    report.checks_passed.push_back("build passphrase opens no keyslot");
    // Clevis tokens whose keyslots are gone (left by a tool or an older luksforge) open nothing.
    remove_dead_clevis_tokens(volume);
    volume.remove_token(state->token);
    report.timings_seconds.emplace_back("remove-build-passphrase", watch.seconds());

    report.fingerprint_after = volume.fingerprint();
    if (report.fingerprint_after == report.fingerprint_before)
        throw Error(EIO, "the volume key of " + target.describe() + " did not change");
    report.checks_passed.insert(report.checks_passed.begin(), "volume key replaced (fingerprint changed)");
    fill_binding_report(report, volume, slot);
    report.finished_at = utc_timestamp();
    if (options.ledger) {
        Ledger ledger = Ledger::open(*options.ledger);
        ledger.record(
            ledger_record(report.fingerprint_after, ledger_image_name(target), report.uuid, options.policy, "sealed"));
    }
    return report;
}

namespace {

json_t* servers_json(const std::vector<TangServer>& servers) {
    json_t* array = json_array();
    for (const TangServer& s : servers) {
        json_t* o = json_object();
        json_object_set_new(o, "url", json_string(s.url.c_str()));
        json_object_set_new(o, "exchange_thumbprint", json_string(s.exchange_thumbprint.c_str()));
        json_t* thps = json_array();
        for (const auto& t : s.signing_thumbprints) json_array_append_new(thps, json_string(t.c_str()));
        json_object_set_new(o, "signing_thumbprints", thps);
        json_array_append_new(array, o);
    }
    return array;
}

json_t* optional_string(const std::string& s) { return s.empty() ? json_null() : json_string(s.c_str()); }

}  // namespace

std::string SealReport::to_json() const {
    JsonPtr root = json_take(json_object());
    json_t* r = root.get();
    json_object_set_new(r, "image", json_string(image.c_str()));
    json_object_set_new(r, "partition", partition ? json_integer(*partition) : json_null());
    json_object_set_new(r, "uuid", json_string(uuid.c_str()));
    json_object_set_new(r, "sealed", json_true());
    json_object_set_new(r, "already_sealed", json_boolean(already_sealed));
    json_object_set_new(r, "resumed_from", optional_string(resumed_from));
    json_object_set_new(r, "fingerprint_before", json_string(fingerprint_before.c_str()));
    json_object_set_new(r, "fingerprint_after", json_string(fingerprint_after.c_str()));
    json_t* binding = json_object();
    json_object_set_new(binding, "pin", json_string(pin.c_str()));
    JsonPtr config;
    try {
        config = detail::json_parse(pin_config, "pin config");
    } catch (const Error&) {
    }
    json_object_set_new(binding, "config", config ? json_incref(config.get()) : json_string(pin_config.c_str()));
    json_object_set_new(binding, "keyslot", json_integer(keyslot));
    json_object_set_new(binding, "token", json_integer(token));
    json_object_set_new(binding, "servers", servers_json(servers));
    json_object_set_new(r, "binding", binding);
    json_t* removed = json_array();
    for (int s : removed_keyslots) json_array_append_new(removed, json_integer(s));
    json_object_set_new(r, "removed_keyslots", removed);
    json_t* checks = json_array();
    for (const auto& c : checks_passed) json_array_append_new(checks, json_string(c.c_str()));
    json_object_set_new(r, "checks_passed", checks);
    json_t* timings = json_object();
    double total = 0;
    for (const auto& [step, seconds] : timings_seconds) {
        json_object_set_new(timings, step.c_str(), json_real(seconds));
        total += seconds;
    }
    json_object_set_new(timings, "total", json_real(total));
    json_object_set_new(r, "timings_seconds", timings);
    json_t* policy_json = json_object();
    json_object_set_new(policy_json, "path", optional_string(policy.path.string()));
    json_object_set_new(policy_json, "sha256", optional_string(policy.sha256));
    json_object_set_new(r, "policy", policy_json);
    json_object_set_new(r, "finished_at", json_string(finished_at.c_str()));
    return detail::json_dump(r, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
}

// --- sparse copies ----------------------------------------------------------------------------------------------

void copy_sparse(const std::filesystem::path& source, const std::filesystem::path& destination) {
    int in = ::open(source.c_str(), O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        if (errno == ENOENT) throw NotFoundError("cannot open " + source.string() + ": no such file");
        throw Error(errno, "cannot open " + source.string() + ": " + std::strerror(errno));
    }
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } close_in{in};
    struct stat st{};
    if (::fstat(in, &st) != 0) throw Error(errno, "cannot stat " + source.string());
    if (!S_ISREG(st.st_mode)) throw FormatError(source.string() + " is not a regular file");
    // Instances carry key material: never readable by others, not even for a moment.
    int out = ::open(destination.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) throw Error(errno, "cannot create " + destination.string() + ": " + std::strerror(errno));
    Closer close_out{out};
    ::fchmod(out, 0600);  // whatever the umask
    const off_t size = st.st_size;
    if (::ftruncate(out, size) != 0) throw Error(errno, "cannot size " + destination.string() + ": " + std::strerror(errno));

    std::vector<char> buffer;
    off_t offset = 0;
    while (offset < size) {
        off_t data = ::lseek(in, offset, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) break;  // only a hole remains
            // No SEEK_DATA support: treat everything as data.
            data = offset;
        }
        off_t hole = ::lseek(in, data, SEEK_HOLE);
        if (hole < 0) hole = size;
        off_t position_in = data, position_out = data;
        while (position_in < hole) {
            const std::size_t chunk = static_cast<std::size_t>(std::min<off_t>(hole - position_in, 64 << 20));
            ssize_t copied = ::copy_file_range(in, &position_in, out, &position_out, chunk, 0);
            if (copied > 0) continue;
            if (copied == 0) break;
            if (errno == EINTR) continue;
            if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
                throw Error(errno, "cannot copy " + source.string() + ": " + std::strerror(errno));
            // copy_file_range unsupported here: plain reads and writes.
            buffer.resize(1 << 20);
            ssize_t got = ::pread(in, buffer.data(), std::min(chunk, buffer.size()), position_in);
            if (got < 0) throw Error(errno, "cannot read " + source.string() + ": " + std::strerror(errno));
            if (got == 0) break;
            for (ssize_t written = 0; written < got;) {
                ssize_t w = ::pwrite(out, buffer.data() + written, static_cast<std::size_t>(got - written), position_out);
                if (w < 0) {
                    if (errno == EINTR) continue;
                    throw Error(errno, "cannot write " + destination.string() + ": " + std::strerror(errno));
                }
                written += w;
                position_out += w;
            }
            position_in += got;
        }
        offset = hole;
    }
    if (::fsync(out) != 0) throw Error(errno, "cannot sync " + destination.string() + ": " + std::strerror(errno));
}

namespace {

// Unlinks a temporary file unless dismissed.
class TemporaryFile {
public:
    explicit TemporaryFile(std::filesystem::path path) : path_(std::move(path)) {}
    TemporaryFile(const TemporaryFile&) = delete;
    TemporaryFile& operator=(const TemporaryFile&) = delete;
    ~TemporaryFile() {
        if (!path_.empty()) ::unlink(path_.c_str());
    }
    void dismiss() noexcept { path_.clear(); }

private:
    std::filesystem::path path_;
};

// Rename without ever replacing an existing file.
void rename_no_replace(const std::filesystem::path& from, const std::filesystem::path& to) {
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return;
    if (errno == EEXIST) throw Error(EEXIST, to.string() + " already exists");
    throw Error(errno, "cannot rename " + from.string() + " to " + to.string() + ": " + std::strerror(errno));
}

// Hidden `.NAME.PID.partial` files whose process is gone (killed mid-instance).
void remove_stale_partials(const std::filesystem::path& dir) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        if (!name.starts_with(".") || !name.ends_with(".partial")) continue;
        const std::string rest = name.substr(0, name.size() - 8);
        const std::size_t dot = rest.rfind('.');
        if (dot == std::string::npos) continue;
        const std::string pid_text = rest.substr(dot + 1);
        if (pid_text.empty() || !std::all_of(pid_text.begin(), pid_text.end(), [](char c) { return c >= '0' && c <= '9'; }))
            continue;
        const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
        if (::kill(pid, 0) != 0 && errno == ESRCH) ::unlink(entry.path().c_str());
    }
}

int highest_instance_number(const std::filesystem::path& dir, const std::string& stem) {
    int highest = 0;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        const std::string prefix = stem + "-";
        if (name.size() != prefix.size() + 8 || name.compare(0, prefix.size(), prefix) != 0 ||
            name.compare(name.size() - 4, 4, ".img") != 0)
            continue;
        const std::string digits = name.substr(prefix.size(), 4);
        if (std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
            highest = std::max(highest, std::stoi(digits));
    }
    return highest;
}

}  // namespace

// --- stamp ------------------------------------------------------------------------------------------------------

StampReport stamp(const std::filesystem::path& base, std::size_t count, const std::filesystem::path& out_dir,
                  const StampOptions& options) {
    if (count == 0) throw FormatError("--count must be at least 1");
    if (count > 9999) throw FormatError("--count must be at most 9999");
    const LuksTarget base_target = select_luks_target(base, options.partition);

    StampReport report;
    report.base = absolute_string(base);
    SecretBuffer base_passphrase;
    PinBinding binding;
    {
        // A shared lock: other stamps may read the base concurrently, a seal may not change it.
        DeviceLock base_lock = DeviceLock::acquire(base, false);
        AttachedTarget attached = AttachedTarget::attach(base_target, true);
        Volume volume = Volume::open(attached.device(), Volume::Access::read_only);
        if (read_state(volume))
            throw FormatError(base_target.describe() + " has an unfinished seal; run seal on it again first");
        if (volume.inspect().reencryption_in_progress)
            throw FormatError(base_target.describe() + " is in the middle of a re-encryption");
        clevis::Unlocked unlocked = clevis::unlock(volume, std::nullopt, options.pin_options);
        base_passphrase = std::move(unlocked.passphrase);
        report.base_fingerprint = volume.fingerprint();
        if (options.binding) {
            binding = *options.binding;
        } else {
            const std::optional<Token> token = volume.token(unlocked.token);
            if (!token) throw NotFoundError("the base binding's token vanished");
            auto [pin, config] = config_from_jwe(clevis::token_to_compact(token->json));
            binding = {pin, detail::json_dump(config.get())};
        }
    }

    std::filesystem::create_directories(out_dir);
    std::optional<Ledger> ledger;
    if (options.ledger) ledger = Ledger::open(*options.ledger);
    const std::string stem = base.stem().string();
    remove_stale_partials(out_dir);
    int number = highest_instance_number(out_dir, stem);
    const auto instance_path = [&](int n) {
        char suffix[32];
        std::snprintf(suffix, sizeof suffix, "-%04d.img", n);
        return out_dir / (stem + suffix);
    };

    for (std::size_t index = 0; index < count; ++index) {
        ++number;
        std::filesystem::path final_path = instance_path(number);
        // Private to this process: a concurrent stamp into the same directory never touches it.
        const std::filesystem::path partial =
            out_dir / ("." + final_path.filename().string() + "." + std::to_string(::getpid()) + ".partial");
        if (options.on_instance) options.on_instance(final_path, index, count);
        TemporaryFile temporary(partial);
        {
            DeviceLock base_lock = DeviceLock::acquire(base, false);
            copy_sparse(base, partial);
        }

        StampedInstance instance;
        instance.image = final_path;
        {
            LuksTarget target = select_luks_target(partial, base_target.partition);
            AttachedTarget attached = AttachedTarget::attach(target);
            Volume volume = Volume::open(attached.device());
            // A fresh volume key; the inherited keyslot follows it (its passphrase is the base's).
            rekey_to_completion(volume, {base_passphrase.view()}, options.drop_other_keyslots, nullptr, false);
            remove_dead_clevis_tokens(volume);
            const std::optional<int> inherited = volume.test_passphrase(base_passphrase.view());
            if (!inherited) throw Error(EIO, "the re-keyed copy lost the inherited keyslot");

            clevis::BindOptions bind_options;
            bind_options.pin = options.pin_options;
            bind_options.pbkdf = options.keyslot_pbkdf;
            bind_options.verify = true;
            clevis::BindResult bound =
                clevis::bind(volume, binding.pin, binding.config_json, base_passphrase.view(), bind_options);
            if (bound.verification != clevis::Verification::verified)
                throw TangError("instance binding not verified: " + bound.message);

            // Drop what every instance would otherwise share with the base: its token and keyslot.
            while (std::optional<int> slot = volume.test_passphrase(base_passphrase.view())) {
                if (*slot == bound.keyslot) throw Error(EIO, "the new binding reuses the base passphrase");
                volume.remove_keyslot_and_tokens(*slot);
            }
            instance.keyslot = bound.keyslot;
            instance.token = bound.token;
            instance.fingerprint = volume.fingerprint();
            instance.uuid = volume.inspect().uuid;
        }
        if (instance.fingerprint == report.base_fingerprint)
            throw Error(EIO, "instance " + final_path.string() + " still carries the base's volume key");

        // Record, then publish under the next free name (another stamp may have taken this one meanwhile).
        for (int attempt = 0;; ++attempt) {
            std::optional<std::int64_t> reservation;
            if (ledger) {
                reservation = ledger->reserve(
                    ledger_record(instance.fingerprint, ledger_image_name(final_path, base_target.partition),
                                  instance.uuid, options.policy, "stamped"),
                    options.max_instances_per_key);
            }
            try {
                rename_no_replace(partial, final_path);
                break;
            } catch (const Error& e) {
                if (reservation) ledger->release(*reservation);
                if (e.code().value() != EEXIST || attempt >= 1000) throw;
                final_path = instance_path(++number);
            } catch (...) {
                if (reservation) ledger->release(*reservation);
                throw;
            }
        }
        instance.image = final_path;
        temporary.dismiss();
        fsync_directory(out_dir);
        report.instances.push_back(std::move(instance));
    }
    return report;
}

std::string StampReport::to_json() const {
    JsonPtr root = json_take(json_object());
    json_object_set_new(root.get(), "base", json_string(base.c_str()));
    json_object_set_new(root.get(), "base_fingerprint", json_string(base_fingerprint.c_str()));
    json_t* list = json_array();
    for (const StampedInstance& i : instances) {
        json_t* o = json_object();
        json_object_set_new(o, "image", json_string(i.image.c_str()));
        json_object_set_new(o, "uuid", json_string(i.uuid.c_str()));
        json_object_set_new(o, "fingerprint", json_string(i.fingerprint.c_str()));
        json_object_set_new(o, "keyslot", json_integer(i.keyslot));
        json_object_set_new(o, "token", json_integer(i.token));
        json_array_append_new(list, o);
    }
    json_object_set_new(root.get(), "instances", list);
    return detail::json_dump(root.get(), JSON_INDENT(2) | JSON_PRESERVE_ORDER);
}

// --- clone ------------------------------------------------------------------------------------------------------

StampedInstance clone_image(const std::filesystem::path& base, const std::filesystem::path& out,
                            const CloneOptions& options) {
    if (std::filesystem::exists(out)) throw Error(EEXIST, out.string() + " already exists");
    const LuksTarget target = select_luks_target(base, options.partition);
    StampedInstance instance;
    instance.image = out;
    {
        DeviceLock base_lock = DeviceLock::acquire(base, false);
        AttachedTarget attached = AttachedTarget::attach(target, true);
        Volume volume = Volume::open(attached.device(), Volume::Access::read_only);
        instance.fingerprint = volume.fingerprint();
        instance.uuid = volume.inspect().uuid;
    }
    std::optional<Ledger> ledger;
    std::optional<std::int64_t> reservation;
    if (options.ledger) {
        ledger = Ledger::open(*options.ledger);
        const LedgerRecord base_record =
            ledger_record(instance.fingerprint, ledger_image_name(target), instance.uuid, options.policy, "sealed");
        // The base itself is an instance of its key; reserve() does not count an already-recorded image twice.
        ledger->reserve(base_record, options.max_instances_per_key);
        reservation = ledger->reserve(ledger_record(instance.fingerprint, ledger_image_name(out, target.partition),
                                                    instance.uuid, options.policy, "cloned"),
                                      options.max_instances_per_key);
    }
    try {
        const std::filesystem::path partial =
            out.parent_path() / ("." + out.filename().string() + "." + std::to_string(::getpid()) + ".partial");
        TemporaryFile temporary(partial);
        {
            DeviceLock base_lock = DeviceLock::acquire(base, false);
            copy_sparse(base, partial);
        }
        rename_no_replace(partial, out);
        temporary.dismiss();
        fsync_directory(out.parent_path());
    } catch (...) {
        if (reservation) ledger->release(*reservation);
        throw;
    }
    return instance;
}

}  // namespace luksforge
