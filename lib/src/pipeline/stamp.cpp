// stamp: N instances of a sealed base image, each re-keyed to its own volume key with its own verified
// binding; recorded in the ledger and published under the next free NAME-NNNN.img.
#include "pipeline/one_pass_instance.hpp"
#include "pipeline/pipeline_internal.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/image.hpp>

#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <variant>

namespace luksforge {

using detail::absolute_string;
using detail::config_from_jwe;
using detail::fsync_directory;
using detail::JsonPtr;
using detail::json_take;
using detail::ledger_image_name;
using detail::ledger_record;
using detail::read_state;
using detail::rekey_to_completion;
using detail::remove_dead_clevis_tokens;
using detail::remove_stale_partials;
using detail::rename_no_replace;
using detail::TemporaryFile;

namespace {

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

// The one-pass source for stamping from `volume`, or nullopt (the reason in the report) to fall back to
// libcryptsetup re-encryption. Instances carry only their new binding: keyslots of the base other than the one
// its binding opened must be dropped knowingly, as the libcryptsetup path's re-key demands.
std::optional<detail::OnePassSource> choose_one_pass(const Volume& volume, const LuksTarget& target,
                                                     int binding_keyslot, const SecretBuffer& passphrase,
                                                     bool drop_other_keyslots, StampReport& report) {
    if (!drop_other_keyslots) {
        std::string others;
        for (const Keyslot& slot : volume.keyslots())
            if (slot.id != binding_keyslot) others += (others.empty() ? "" : ", ") + std::to_string(slot.id);
        if (!others.empty())
            throw FormatError("keyslot(s) " + others + " of " + target.describe() +
                              " are not opened by the base binding; drop them (--drop-other-keyslots)");
    }
    auto source = detail::one_pass_source(volume, target, volume.volume_key(passphrase.view(), binding_keyslot));
    if (auto* reason = std::get_if<std::string>(&source)) {
        report.data_path = "libcryptsetup";
        report.data_path_note = "one-pass data path not used: " + *reason;
        return std::nullopt;
    }
    report.data_path = "one-pass";
    return std::move(std::get<detail::OnePassSource>(source));
}

// One instance by libcryptsetup: a sparse copy of the base, re-keyed, bound and verified, then stripped of the
// inherited keyslot (the fallback for what the one-pass path does not implement).
void make_instance_by_reencryption(const std::filesystem::path& base, const LuksTarget& base_target,
                                   const std::filesystem::path& partial, const SecretBuffer& base_passphrase,
                                   const PinBinding& binding, const StampOptions& options, StampedInstance& instance) {
    {
        DeviceLock base_lock = DeviceLock::acquire(base, false);
        copy_sparse(base, partial);
    }
    LuksTarget target = select_luks_target(partial, base_target.partition);
    AttachedTarget attached = AttachedTarget::attach(target);
    Volume volume = Volume::open(attached.device());
    // A fresh volume key; the inherited keyslot follows it (its passphrase is the base's).
    rekey_to_completion(volume, {base_passphrase.view()}, options.drop_other_keyslots, nullptr, false);
    remove_dead_clevis_tokens(volume);
    const std::optional<int> inherited = volume.test_passphrase(base_passphrase.view());
    if (!inherited) throw Error(EIO, "the re-keyed copy lost the inherited keyslot");

    // One Clevis token at a time (a default 16 KiB header holds only one of sss over 3 Tang servers): the new
    // keyslot first, its JWE proven through the servers, then its token in place of the inherited one; the
    // inherited keyslot goes last. A partial instance is discarded on any failure.
    SecretBuffer passphrase = base64url_encode(random_secret(40).bytes());
    const std::string jwe = clevis_encrypt(binding.pin, binding.config_json, passphrase.bytes(), options.pin_options);
    const int slot = volume.add_keyslot(base_passphrase.view(), passphrase.view(), options.keyslot_pbkdf);
    const SecretBuffer recovered = clevis_decrypt(jwe, options.pin_options);
    if (volume.test_passphrase(recovered.view(), slot) != slot)
        throw TangError("instance binding not verified: its JWE does not open keyslot " + std::to_string(slot));
    std::optional<int> inherited_token;
    for (const Token& token : volume.tokens())
        if (token.type == "clevis" && token.keyslots == std::vector<int>{*inherited}) inherited_token = token.id;
    const int token = volume.set_token(clevis::token_json(slot, jwe), inherited_token.value_or(-1));

    // Drop what every instance would otherwise share with the base: its keyslot (and any token left on it).
    while (std::optional<int> old = volume.test_passphrase(base_passphrase.view())) {
        if (*old == slot) throw Error(EIO, "the new binding reuses the base passphrase");
        volume.remove_keyslot_and_tokens(*old);
    }
    instance.keyslot = slot;
    instance.token = token;
    instance.fingerprint = volume.fingerprint();
    instance.uuid = volume.inspect().uuid;
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
    std::optional<detail::OnePassSource> one_pass;
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
        if (options.one_pass) {
            one_pass = choose_one_pass(volume, base_target, unlocked.keyslot, base_passphrase, options.drop_other_keyslots,
                                       report);
        } else {
            report.data_path = "libcryptsetup";
            report.data_path_note = "one-pass data path not requested";
        }
        const std::optional<Token> base_token = volume.token(unlocked.token);
        if (!base_token) throw NotFoundError("the base binding's token vanished");
        if (options.binding) {
            binding = *options.binding;
        } else {
            auto [pin, config] = config_from_jwe(clevis::token_to_compact(base_token->json));
            binding = {pin, detail::json_dump(config.get())};
        }
        if (!one_pass) {
            // Re-encryption of a copy, then the new token in place of the base's: that must fit, up front.
            PipelineSteps steps;
            steps.rekeyed_keyslots = 1;
            steps.replaced_token_bytes = base_token->json.size();
            detail::require_header_room(volume, binding, options.pin_options, steps,
                                        "stamp (libcryptsetup re-encryption) of " + base_target.describe());
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

    // Private to this process: a concurrent stamp into the same directory never touches it.
    const auto hidden = [&](const std::filesystem::path& final_path, const char* kind) {
        return out_dir / ("." + final_path.filename().string() + kind + std::to_string(::getpid()) + ".partial");
    };
    // Record, then publish under the next free name (another stamp may have taken this one meanwhile).
    const auto publish = [&](StampedInstance instance, const std::filesystem::path& partial,
                             std::filesystem::path final_path, TemporaryFile& temporary) {
        if (instance.fingerprint == report.base_fingerprint)
            throw Error(EIO, "instance " + final_path.string() + " still carries the base's volume key");
        for (int attempt = 0;; ++attempt) {
            std::optional<std::int64_t> reservation;
            if (ledger) {
                reservation = ledger->reserve(
                    ledger_record(instance.fingerprint, ledger_image_name(final_path, base_target.partition),
                                  instance.uuid, options.policy, "stamped"),
                    options.max_instances_per_key);
            }
            try {
                // Committed before the instance appears under its name: never a published, unrecorded image.
                if (reservation) ledger->commit(*reservation);
                rename_no_replace(partial, final_path);
                break;
            } catch (const Error& e) {
                detail::release_quietly(ledger, reservation);
                if (e.code().value() != EEXIST || attempt >= 1000) throw;
                final_path = instance_path(++number);
            } catch (...) {
                detail::release_quietly(ledger, reservation);
                throw;
            }
        }
        instance.image = final_path;
        temporary.dismiss();
        fsync_directory(out_dir);
        report.instances.push_back(std::move(instance));
    };

    // One pass over the base serves up to this many instances (bounded open files and temporary disk space).
    constexpr std::size_t instances_per_pass = 8;
    for (std::size_t index = 0; index < count;) {
        if (!one_pass) {
            const std::filesystem::path final_path = instance_path(++number);
            const std::filesystem::path partial = hidden(final_path, ".");
            if (options.on_instance) options.on_instance(final_path, index, count);
            TemporaryFile temporary(partial);
            StampedInstance instance;
            make_instance_by_reencryption(base, base_target, partial, base_passphrase, binding, options, instance);
            publish(std::move(instance), partial, final_path, temporary);
            ++index;
            continue;
        }
        // The base is read and decrypted once for the whole batch; each instance's header is made apart and
        // written last, then the instance is published before the next one's header is made.
        const std::size_t batch = std::min(instances_per_pass, count - index);
        std::vector<std::filesystem::path> finals, partials, scratches;
        std::vector<std::unique_ptr<TemporaryFile>> temporaries;
        for (std::size_t b = 0; b < batch; ++b) {
            finals.push_back(instance_path(++number));
            partials.push_back(hidden(finals.back(), "."));
            scratches.push_back(hidden(finals.back(), ".header."));
            temporaries.push_back(std::make_unique<TemporaryFile>(partials.back()));
        }
        DeviceLock base_lock = DeviceLock::acquire(base, false);
        detail::write_one_pass_images(
            *one_pass, {binding, options.pin_options, options.keyslot_pbkdf}, partials, scratches, options.keep_holes,
            [&](std::size_t b, const detail::OnePassImage& made) {
                if (options.on_instance) options.on_instance(finals[b], index + b, count);
                StampedInstance instance;
                instance.keyslot = made.keyslot;
                instance.token = made.token;
                instance.fingerprint = made.fingerprint;
                instance.uuid = made.uuid;
                report.data_bytes = made.stats.data_bytes;
                report.hole_bytes = made.stats.hole_bytes;
                publish(std::move(instance), partials[b], finals[b], *temporaries[b]);
            });
        index += batch;
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
    json_object_set_new(root.get(), "data_path", json_string(data_path.c_str()));
    json_object_set_new(root.get(), "data_path_note", json_string(data_path_note.c_str()));
    json_object_set_new(root.get(), "data_bytes_per_instance", json_integer(static_cast<json_int_t>(data_bytes)));
    json_object_set_new(root.get(), "hole_bytes_per_instance", json_integer(static_cast<json_int_t>(hole_bytes)));
    return detail::json_dump(root.get(), JSON_INDENT(2) | JSON_PRESERVE_ORDER);
}

}  // namespace luksforge
