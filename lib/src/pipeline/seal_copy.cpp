#include "pipeline/seal_copy.hpp"

#include "pipeline/one_pass_instance.hpp"
#include "pipeline/pipeline_internal.hpp"

#include <luksforge/error.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <variant>

namespace luksforge::detail {

namespace {

// The finished image is the sealed one: prove it before reporting (new key, only the verified binding).
void check_sealed_copy(const std::filesystem::path& image, const SealOptions& options, const LuksTarget& target,
                       const SecretBuffer& build_passphrase, const OnePassImage& made, SealReport& report) {
    Stopwatch watch;
    const LuksTarget sealed_target = select_luks_target(image, options.partition);
    AttachedTarget attached = AttachedTarget::attach(sealed_target, true);
    Volume sealed = Volume::open(attached.device(), Volume::Access::read_only);
    report.uuid = sealed.inspect().uuid;
    report.fingerprint_after = sealed.fingerprint();
    if (report.fingerprint_after != made.fingerprint || report.fingerprint_after == report.fingerprint_before)
        throw Error(EIO, "the sealed copy of " + target.describe() + " does not carry its new volume key");
    if (sealed.test_passphrase(build_passphrase.view()))
        throw Error(EIO, "the build passphrase still opens the sealed copy of " + target.describe());
    report.checks_passed.push_back("volume key replaced (fingerprint changed)");
    report.checks_passed.push_back("passphrase recovered through Tang opens keyslot " + std::to_string(made.keyslot));
    report.checks_passed.push_back("build passphrase opens no keyslot");
    fill_binding_report(report, sealed, made.keyslot);
    report.timings_seconds.emplace_back("check", watch.seconds());
}

}  // namespace

std::optional<SealReport> seal_by_copy(const std::filesystem::path& image, const LuksTarget& target,
                                       const Volume& volume, const SecretBuffer& build_passphrase,
                                       const SealOptions& options, std::string& note) {
    struct stat original{};
    if (::stat(image.c_str(), &original) != 0 || !S_ISREG(original.st_mode)) {
        note = "no copy of a block device: sealed in place";
        return std::nullopt;
    }
    SecretBuffer key;
    try {
        key = volume.volume_key(build_passphrase.view());
    } catch (const AuthError&) {
        return std::nullopt;
    }
    std::vector<int> original_keyslots;
    for (const Keyslot& slot : volume.keyslots()) original_keyslots.push_back(slot.id);
    auto source = one_pass_source(volume, target, std::move(key));
    if (auto* reason = std::get_if<std::string>(&source)) {
        note = "no one-pass copy (" + *reason + "): sealed in place";
        return std::nullopt;
    }

    SealReport report;
    report.image = absolute_string(image);
    report.partition = target.partition;
    report.policy = options.policy;
    report.data_path = "one-pass copy";
    report.fingerprint_before = volume.fingerprint();
    if (options.on_step) options.on_step("rekey");
    const std::filesystem::path dir = image.parent_path().empty() ? std::filesystem::path(".") : image.parent_path();
    remove_stale_partials(dir);
    const std::string pid = std::to_string(::getpid());
    const std::filesystem::path partial = dir / ("." + image.filename().string() + "." + pid + ".partial");
    const std::filesystem::path scratch = dir / ("." + image.filename().string() + ".header." + pid + ".partial");
    TemporaryFile temporary(partial);
    const OnePassImage made = write_one_pass_image(
        std::get<OnePassSource>(source), {options.binding, options.pin_options, options.keyslot_pbkdf}, partial,
        scratch, true, [](const char* step) { crash_point(step); }, options.on_progress);
    // The sealed image keeps the original's owner and mode (0600 stays when the owner cannot be kept).
    if (::chown(partial.c_str(), original.st_uid, original.st_gid) == 0) ::chmod(partial.c_str(), original.st_mode & 07777);
    if (::rename(partial.c_str(), image.c_str()) != 0)
        throw Error(errno, "cannot rename " + partial.string() + " over " + image.string() + ": " + std::strerror(errno));
    temporary.dismiss();
    fsync_directory(dir);
    crash_point("copy-renamed");
    report.timings_seconds.emplace_back("rekey", made.stats.seconds);
    report.timings_seconds.emplace_back("bind+verify", made.bind_seconds);

    check_sealed_copy(image, options, target, build_passphrase, made, report);
    report.removed_keyslots = original_keyslots;
    report.finished_at = utc_timestamp();
    if (options.ledger) {
        Ledger ledger = Ledger::open(*options.ledger);
        ledger.record(ledger_record(report.fingerprint_after, ledger_image_name(target), report.uuid, options.policy,
                                    "sealed"));
    }
    return report;
}

}  // namespace luksforge::detail
