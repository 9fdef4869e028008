// clone: a plain sparse copy that keeps the volume key, reserved in the ledger against the policy's limit
// before the copy and released when it fails; stale partial copies of killed clones are removed first.
#include "pipeline/pipeline_internal.hpp"

#include <luksforge/error.hpp>
#include <luksforge/image.hpp>

#include <cerrno>

namespace luksforge {

using detail::fsync_directory;
using detail::ledger_image_name;
using detail::ledger_record;
using detail::rename_no_replace;
using detail::TemporaryFile;

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
    const std::filesystem::path out_dir = out.parent_path().empty() ? std::filesystem::path(".") : out.parent_path();
    // A clone killed mid-copy left its `.OUT.PID.partial`: a full copy of the volume key under no name.
    detail::remove_stale_partials(out_dir);
    std::optional<Ledger> ledger;
    std::optional<std::int64_t> reservation;
    if (options.ledger) {
        ledger = Ledger::open(*options.ledger);
        const LedgerRecord base_record =
            ledger_record(instance.fingerprint, ledger_image_name(target), instance.uuid, options.policy, "sealed");
        // The base itself is an instance of its key (it exists: committed at once); reserve() does not count an
        // already-recorded image twice.
        ledger->commit(ledger->reserve(base_record, options.max_instances_per_key));
        // The slot is held before the copy starts, so concurrent clones never overshoot the limit.
        reservation = ledger->reserve(ledger_record(instance.fingerprint, ledger_image_name(out, target.partition),
                                                    instance.uuid, options.policy, "cloned"),
                                      options.max_instances_per_key);
    }
    detail::crash_point("clone-reserved");
    try {
        const std::filesystem::path partial =
            out.parent_path() / ("." + out.filename().string() + "." + std::to_string(::getpid()) + ".partial");
        TemporaryFile temporary(partial);
        {
            DeviceLock base_lock = DeviceLock::acquire(base, false);
            copy_sparse(base, partial);
        }
        detail::crash_point("clone-copied");
        // Committed before the image appears under its name: there is never a published, unrecorded copy. A
        // builder killed between the two leaks the slot (the limit is never exceeded); `luksforge ledger prune`
        // gives it back (prune_ledger: a committed record of this host, no image, no live partial beside it).
        if (reservation) ledger->commit(*reservation);
        detail::crash_point("clone-committed");
        rename_no_replace(partial, out);
        temporary.dismiss();
        fsync_directory(out.parent_path());
    } catch (...) {
        detail::release_quietly(ledger, reservation);
        throw;
    }
    return instance;
}

}  // namespace luksforge
