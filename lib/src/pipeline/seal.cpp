// seal: re-key a built image to a fresh volume key, bind the policy's pin to a new keyslot, prove through the
// real servers that the binding opens it, and only then remove the build passphrase. Each step is recorded in
// the header's seal state first, so a rerun after a crash finishes from where it stopped. Read seal() and
// SealRun::run() first: they are the list of steps below.
#include "pipeline/pipeline_internal.hpp"
#include "pipeline/seal_copy.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/image.hpp>
#include <luksforge/tang.hpp>

#include <algorithm>
#include <cerrno>

namespace luksforge {

using detail::clevis_token_for;
using detail::crash_point;
using detail::fill_binding_report;
using detail::JsonPtr;
using detail::json_take;
using detail::SealState;
using detail::Stopwatch;
using detail::write_state;

namespace {

// The keyslots `passphrase` opens (one PBKDF derivation per keyslot).
std::vector<int> keyslots_opened_by(const Volume& volume, const SecretBuffer& passphrase) {
    std::vector<int> opened;
    for (const Keyslot& slot : volume.keyslots())
        if (volume.test_passphrase(passphrase.view(), slot.id) == slot.id) opened.push_back(slot.id);
    return opened;
}

bool contains(const std::vector<int>& list, int value) { return std::find(list.begin(), list.end(), value) != list.end(); }

// The largest clevis token serving only keyslots in `slots` (e.g. the binding a kickstart's %post made on the
// keyslot the build passphrase opens): the new binding takes its place.
std::optional<Token> token_to_replace(const Volume& volume, const std::vector<int>& slots) {
    std::optional<Token> found;
    for (const Token& token : volume.tokens()) {
        if (token.type != "clevis" || token.keyslots.empty()) continue;
        if (!std::all_of(token.keyslots.begin(), token.keyslots.end(), [&](int k) { return contains(slots, k); }))
            continue;
        if (!found || token.json.size() > found->json.size()) found = token;
    }
    return found;
}

int first_free_keyslot(const Volume& volume) {
    std::vector<int> used;
    for (const Keyslot& slot : volume.keyslots()) used.push_back(slot.id);
    for (int id = 0; id < 32; ++id)
        if (std::find(used.begin(), used.end(), id) == used.end()) return id;
    throw FormatError("no free keyslot in " + volume.path().string());
}

// One seal of one volume: the steps in the order seal reaches them. Each step runs only when the state
// record says it is due, and moves the record on when it is done.
class SealRun {
public:
    SealRun(const LuksTarget& target, Volume& volume, const SecretBuffer& build_passphrase, const SealOptions& options)
        : target_(target), volume_(volume), build_passphrase_(build_passphrase), options_(options) {}

    SealReport run(const std::filesystem::path& image) {
        start_report(image);
        std::optional<SealState> found = detail::read_state(volume_);
        report_.data_path = "libcryptsetup in place";
        if (options_.copy) {
            // Where a copy is allowed, a fresh seal is one pass into a new file (seal_copy.cpp).
            if (found) {
                report_.data_path_note = "an interrupted in-place seal is finished in place";
            } else if (std::optional<SealReport> sealed = detail::seal_by_copy(
                           image, target_, volume_, build_passphrase_, options_, report_.data_path_note)) {
                return std::move(*sealed);
            }
        }
        if (!found) {
            // Nothing in progress and the build passphrase is gone: sealed before, if a binding opens it.
            if (!volume_.test_passphrase(build_passphrase_.view())) return confirm_sealed_before();
            require_room(true, true);
            begin_state();
        } else {
            state_ = std::move(*found);
            report_.resumed_from = state_.step;
            if (state_.step == "rekey" || (state_.step == "bind" && !state_.pending_keyslot))
                require_room(false, state_.step == "rekey");
        }
        report_.fingerprint_before = state_.fingerprint_before;

        if (state_.step == "rekey") replace_volume_key();
        if (state_.step == "bind") bind_policy_pin();
        bool verified_here = false;
        if (state_.step == "verify") {
            verify_binding();
            verified_here = true;
        }
        if (state_.step != "remove-build-passphrase")
            throw FormatError("unknown seal step \"" + state_.step + "\" in " + target_.describe());
        const int slot = remove_build_passphrase(verified_here);
        finish_report(slot);
        record_in_ledger();
        return report_;
    }

private:
    void step_started(const char* name) const {
        if (options_.on_step) options_.on_step(name);
    }

    void start_report(const std::filesystem::path& image) {
        report_.image = detail::absolute_string(image);
        report_.partition = target_.partition;
        report_.policy = options_.policy;
        report_.uuid = volume_.inspect().uuid;
    }

    // The volume carries no seal state and the build passphrase opens nothing: prove its binding opens it.
    SealReport confirm_sealed_before() {
        if (clevis::list(volume_).empty())
            throw AuthError("the build passphrase opens no keyslot of " + target_.describe() +
                            " and it carries no Clevis binding");
        Stopwatch watch;
        clevis::Unlocked unlocked = clevis::unlock(volume_, std::nullopt, options_.pin_options);
        report_.timings_seconds.emplace_back("verify", watch.seconds());
        report_.already_sealed = true;
        report_.fingerprint_before = report_.fingerprint_after = volume_.fingerprint();
        fill_binding_report(report_, volume_, unlocked.keyslot);
        report_.checks_passed.push_back("binding of keyslot " + std::to_string(unlocked.keyslot) +
                                        " opens the volume through Tang");
        report_.checks_passed.push_back("build passphrase opens no keyslot");
        report_.finished_at = utc_timestamp();
        return report_;
    }

    // Before anything is written: the re-key (if still due) and the bind, one Clevis token at a time, must fit
    // the metadata; otherwise say what is too big.
    void require_room(bool fresh, bool rekey_due) const {
        const std::vector<int> build_slots = keyslots_opened_by(volume_, build_passphrase_);
        PipelineSteps steps;
        steps.add_state_record = fresh;
        steps.rekeyed_keyslots = rekey_due ? 1 : 0;
        if (const std::optional<Token> replaced = token_to_replace(volume_, build_slots))
            steps.replaced_token_bytes = replaced->json.size();
        if (rekey_due)
            for (const Token& token : volume_.tokens())
                if (token.type == "clevis" && !token.keyslots.empty() &&
                    std::none_of(token.keyslots.begin(), token.keyslots.end(), [&](int k) { return contains(build_slots, k); }))
                    steps.dropped_token_bytes += token.json.size();  // its keyslots go with the re-key
        try {
            detail::require_header_room(volume_, options_.binding, options_.pin_options, steps,
                                        "seal of " + target_.describe());
        } catch (const TangError& e) {
            // No advertisement to measure the token with. The bind step needs the same advertisements, so it
            // would fail after the whole re-encryption: stop before writing anything instead.
            throw TangError("seal of " + target_.describe() + ": the policy's Tang servers are needed to bind and "
                            "one does not answer; nothing was written by this run, run it again when they answer: " +
                            e.what(), e.code().value());
        }
    }

    void begin_state() {
        state_ = SealState{};
        state_.step = "rekey";
        state_.fingerprint_before = volume_.fingerprint();
        state_.started_at = utc_timestamp();
        write_state(volume_, state_);
    }

    // 1. A fresh volume key. Rekey resumes an interrupted re-encryption itself.
    void replace_volume_key() {
        step_started("rekey");
        crash_point("rekey-start");
        Stopwatch watch;
        const bool in_progress = volume_.inspect().reencryption_in_progress;
        if (in_progress || volume_.fingerprint() == state_.fingerprint_before) {
            if (!in_progress) {
                // Unbound keyslots of a re-key that was interrupted before its re-encryption started.
                for (const Keyslot& slot : volume_.keyslots())
                    if (!slot.bound_to_segment) volume_.remove_keyslot_and_tokens(slot.id);
            }
            detail::rekey_to_completion(volume_, {build_passphrase_.view()}, true, options_.on_progress, true,
                                        options_.rekey_hotzone_bytes);
        }
        crash_point("rekey-done");
        detail::remove_dead_clevis_tokens(volume_);
        if (volume_.fingerprint() == state_.fingerprint_before)
            throw Error(EIO, "re-keying " + target_.describe() + " left the volume key unchanged");
        report_.timings_seconds.emplace_back("rekey", watch.seconds());
        state_.step = "bind";
        state_.pending_keyslot.reset();
        write_state(volume_, state_);
    }

    // 2. Bind the policy's pin to a new keyslot. The slot is recorded before it is created, so a keyslot left
    //    without its token by a crash is recognised and removed.
    void bind_policy_pin() {
        step_started("bind");
        Stopwatch watch;
        if (state_.pending_keyslot) settle_interrupted_bind(*state_.pending_keyslot);
        if (state_.step == "bind") {
            const int slot = first_free_keyslot(volume_);
            state_.pending_keyslot = slot;
            if (state_.build_keyslots.empty()) state_.build_keyslots = keyslots_opened_by(volume_, build_passphrase_);
            write_state(volume_, state_);
            crash_point("bind-start");
            add_bound_keyslot(slot);
            crash_point("bind-done");
            state_.step = "verify";
        }
        report_.timings_seconds.emplace_back("bind", watch.seconds());
        write_state(volume_, state_);
    }

    // A bind that was interrupted after recording `slot`: half of a binding goes, a whole one moves on to
    // verification.
    void settle_interrupted_bind(int slot) {
        const bool has_slot = volume_.keyslot(slot).has_value();
        const std::optional<Token> token = clevis_token_for(volume_, slot);
        if (has_slot && !token) {
            volume_.remove_keyslot_and_tokens(slot);
            report_.checks_passed.push_back("removed keyslot " + std::to_string(slot) +
                                            " orphaned by an interrupted bind");
        } else if (!has_slot && token) {
            volume_.remove_token(token->id);
        } else if (has_slot && token) {
            state_.step = "verify";
        }
    }

    // A random passphrase encrypted to the pin and its keyslot `slot`; the JWE is decrypted through the servers
    // and must open that keyslot before one header write puts its token in place of the build keyslot's own
    // clevis token (a kickstart's %post binding), if any: the header holds one Clevis token at a time, and at
    // every moment either that binding or the new, verified one opens the volume.
    void add_bound_keyslot(int slot) {
        SecretBuffer passphrase = base64url_encode(random_secret(40).bytes());
        // Encrypt first: a network or trust failure leaves the header as it was.
        const std::string jwe =
            clevis_encrypt(options_.binding.pin, options_.binding.config_json, passphrase.bytes(), options_.pin_options);
        volume_.add_keyslot(build_passphrase_.view(), passphrase.view(), options_.keyslot_pbkdf, slot);
        crash_point("bind-keyslot-added");
        try {
            const SecretBuffer recovered = clevis_decrypt(jwe, options_.pin_options);
            if (volume_.test_passphrase(recovered.view(), slot) != slot)
                throw AuthError("the new binding's JWE does not open keyslot " + std::to_string(slot));
            const std::optional<Token> replaced = token_to_replace(volume_, state_.build_keyslots);
            volume_.set_token(clevis::token_json(slot, jwe), replaced ? replaced->id : -1);
            if (replaced)
                report_.checks_passed.push_back("verified binding of keyslot " + std::to_string(slot) +
                                                " replaced token " + std::to_string(replaced->id) +
                                                " of the build keyslot in one header write");
        } catch (...) {
            try {
                volume_.remove_keyslot_and_tokens(slot);
            } catch (...) {
            }
            throw;
        }
    }

    // 3. Prove through the real servers that the binding opens its keyslot.
    void verify_binding() {
        step_started("verify");
        Stopwatch watch;
        if (!state_.pending_keyslot) throw FormatError("seal state of " + target_.describe() + " lost its keyslot");
        const int slot = *state_.pending_keyslot;
        try {
            clevis::Unlocked unlocked = clevis::unlock(volume_, slot, options_.pin_options);
            if (unlocked.keyslot != slot || volume_.test_passphrase(unlocked.passphrase.view(), slot) != slot)
                throw AuthError("the recovered passphrase does not open keyslot " + std::to_string(slot));
        } catch (const TangError&) {
            throw;  // servers unreachable: keep the binding; rerunning seal verifies again
        } catch (const Error& e) {
            // Roll back only while another way in remains: the binding may have replaced the build keyslot's
            // token, and a passphrase recovered through that token exists nowhere else.
            const std::vector<int> build_slots = keyslots_opened_by(volume_, build_passphrase_);
            if (std::none_of(build_slots.begin(), build_slots.end(), [&](int k) { return k != slot; }))
                throw AuthError("verification of keyslot " + std::to_string(slot) + " of " + target_.describe() +
                                " failed and nothing else opens it, so the binding is kept: " + e.what());
            roll_back_binding(slot);
            throw AuthError(std::string("verification failed, binding removed (the build passphrase still opens ") +
                            target_.describe() + "): " + e.what());
        }
        report_.checks_passed.push_back("passphrase recovered through Tang opens keyslot " + std::to_string(slot));
        report_.timings_seconds.emplace_back("verify", watch.seconds());
        crash_point("verify-done");
        state_.step = "remove-build-passphrase";
        write_state(volume_, state_);
    }

    // The binding is broken: back to "bind" so a rerun makes a new one.
    void roll_back_binding(int slot) {
        if (auto token = clevis_token_for(volume_, slot)) volume_.remove_token(token->id);
        if (volume_.keyslot(slot)) volume_.remove_keyslot_and_tokens(slot);
        state_.step = "bind";
        state_.pending_keyslot.reset();
        write_state(volume_, state_);
    }

    // 4. Only now drop the build passphrase, then the state record. Returns the binding's keyslot.
    int remove_build_passphrase(bool verified_here) {
        step_started("remove-build-passphrase");
        Stopwatch watch;
        const int slot = state_.pending_keyslot.value_or(-1);
        if (!volume_.keyslot(slot) || !clevis_token_for(volume_, slot))
            throw FormatError("seal state of " + target_.describe() + " names keyslot " + std::to_string(slot) +
                              " but it has no binding; refusing to remove the build passphrase");
        if (!verified_here) {
            // Verified by an earlier, interrupted run: prove it again before the build passphrase goes.
            clevis::Unlocked unlocked = clevis::unlock(volume_, slot, options_.pin_options);
            if (unlocked.keyslot != slot) throw AuthError("the binding does not open keyslot " + std::to_string(slot));
            report_.checks_passed.push_back("passphrase recovered through Tang opens keyslot " + std::to_string(slot));
        }
        // The build keyslots recorded when the bind began, and any other keyslot the passphrase opens. A rerun
        // may get its passphrase from the new binding itself (lmc-postbuild.py recovers it through Tang after a
        // crash): that one keyslot stays.
        std::vector<int> build_slots = state_.build_keyslots;
        for (int k : keyslots_opened_by(volume_, build_passphrase_))
            if (!contains(build_slots, k)) build_slots.push_back(k);
        if (contains(build_slots, slot) && state_.build_keyslots.empty())
            throw AuthError("the build passphrase opens the binding's own keyslot");
        for (int build_slot : build_slots) {
            if (build_slot == slot || !volume_.keyslot(build_slot)) continue;
            // The build keyslot may carry a token of its own (e.g. a kickstart's `clevis luks bind`): it goes
            // first, so neither a finished nor an interrupted seal leaves a token assigned to no keyslot.
            for (int token : volume_.remove_tokens_only_of(build_slot))
                report_.checks_passed.push_back("removed token " + std::to_string(token) + " of build keyslot " +
                                                std::to_string(build_slot));
            crash_point("build-token-removed");
            volume_.remove_keyslot(build_slot);
            report_.removed_keyslots.push_back(build_slot);
            crash_point("build-removed");
        }
        if (volume_.test_passphrase(build_passphrase_.view())) {
            report_.checks_passed.push_back("the passphrase given opens only the new binding's keyslot (it was "
                                            "recovered through it); the recorded build keyslots are gone");
        } else {
            report_.checks_passed.push_back("build passphrase opens no keyslot");
        }
        // Clevis tokens whose keyslots are gone (left by a tool or an older luksforge) open nothing.
        detail::remove_dead_clevis_tokens(volume_);
        volume_.remove_token(state_.token);
        report_.timings_seconds.emplace_back("remove-build-passphrase", watch.seconds());
        return slot;
    }

    void finish_report(int slot) {
        report_.fingerprint_after = volume_.fingerprint();
        if (report_.fingerprint_after == report_.fingerprint_before)
            throw Error(EIO, "the volume key of " + target_.describe() + " did not change");
        report_.checks_passed.insert(report_.checks_passed.begin(), "volume key replaced (fingerprint changed)");
        fill_binding_report(report_, volume_, slot);
        report_.finished_at = utc_timestamp();
    }

    void record_in_ledger() {
        if (!options_.ledger) return;
        Ledger ledger = Ledger::open(*options_.ledger);
        ledger.record(detail::ledger_record(report_.fingerprint_after, detail::ledger_image_name(target_), report_.uuid,
                                            options_.policy, "sealed"));
    }

    const LuksTarget& target_;
    Volume& volume_;
    const SecretBuffer& build_passphrase_;
    const SealOptions& options_;
    SealReport report_;
    SealState state_;
};

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
    return SealRun(target, volume, build_passphrase, options).run(image);
}

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
    json_object_set_new(r, "data_path", json_string(data_path.c_str()));
    json_object_set_new(r, "data_path_note", optional_string(data_path_note));
    return detail::json_dump(r, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
}

}  // namespace luksforge
