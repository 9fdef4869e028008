// The image pipeline: turn a built image (one LUKS2 volume key shared by every copy) into NBDE images that each
// carry their own volume key and a verified Clevis binding.
//
//   seal   re-key an image to a fresh volume key, bind the policy's pin, prove through the real Tang servers
//          that the binding opens the volume, and only then remove the build passphrase. Crash-safe: a small
//          state record lives IN the LUKS2 header (a keyslot-less token of type "luksforge-seal"); every
//          header write is atomic, and rerunning seal finishes from wherever it stopped.
//   stamp  N instances of a sealed base image, each with its own volume key, keyslot passphrase and binding.
//   clone  a plain (sparse) copy that keeps the volume key, counted against the policy's limit in the ledger.
//   audit  group images and devices by volume-key fingerprint and flag keys shared beyond the limit.
//
// Test-only hook: when the environment variable LUKSFORGE_CRASH_AT names a seal step (see seal_crash_points()),
// the process kills itself with SIGKILL at that point. It exists so tests can prove crash recovery
// deterministically; it never changes behaviour when unset.
#pragma once

#include <luksforge/ledger.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pin.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace luksforge {

// A Clevis pin and its configuration, e.g. {"tang", R"({"url":"http://...","thp":"..."})"}.
struct PinBinding {
    std::string pin;
    std::string config_json;
};

// Where a pipeline's policy came from, for reports and the ledger.
struct PolicySource {
    std::filesystem::path path;       // empty when none
    std::string sha256;               // SHA-256 (hex) of the policy file's bytes
};
// Read `path` and hash it.
PolicySource policy_source(const std::filesystem::path& path);

// One Tang server a binding depends on, read from the binding's JWE.
struct TangServer {
    std::string url;
    std::string exchange_thumbprint;                  // the JWE's "kid" (S256 of the exchange key)
    std::vector<std::string> signing_thumbprints;     // S256 of the advertisement's verify keys
};

// --- seal -----------------------------------------------------------------------------------------------------

struct SealOptions {
    PinBinding binding;
    PolicySource policy;
    std::optional<int> partition;                     // required when the image holds several LUKS2 partitions
    PinOptions pin_options;
    Pbkdf keyslot_pbkdf = Pbkdf::pbkdf2_fast(1000);   // for the binding's random 320-bit passphrase
    // Record the sealed volume key in this ledger (nullopt: no ledger).
    std::optional<std::filesystem::path> ledger;
    // Called with each step's name as it starts ("rekey", "bind", "verify", "remove-build-passphrase").
    std::function<void(const std::string&)> on_step;
    // Re-encryption progress.
    std::function<void(std::uint64_t done, std::uint64_t total)> on_progress;
    // Re-encrypt in place in chunks of at most this many bytes (0 = 32 MiB: bounded memory, libcryptsetup's
    // own default hotzone would hold up to 1 GiB of the image in memory; the test hook
    // LUKSFORGE_CRASH_AT=rekey-progress uses 4 MiB so that a crash lands between two chunks).
    std::uint64_t rekey_hotzone_bytes = 0;
    // Allow a copy: write the sealed image in one pass into a new file next to it (multi-core AES-XTS, read
    // and written once), bind and verify its header, fsync, and atomically rename it over the image. Needs room
    // for a second image; a crash at any point leaves the original untouched (or the finished, sealed copy).
    // Falls back to sealing in place (reason in SealReport::data_path_note) for block devices, ciphers the
    // one-pass path does not implement, and images with an unfinished in-place seal.
    bool copy = false;
};

struct SealReport {
    std::string image;
    std::optional<int> partition;
    std::string uuid;
    bool already_sealed = false;      // nothing to do: sealed earlier
    std::string resumed_from;         // the step an interrupted seal was resumed at; empty for a fresh run
    std::string fingerprint_before;
    std::string fingerprint_after;
    std::string pin;
    std::string pin_config;
    std::vector<TangServer> servers;
    int keyslot = -1;                 // the binding's keyslot
    int token = -1;                   // the binding's token
    std::vector<int> removed_keyslots;
    std::vector<std::string> checks_passed;
    std::vector<std::pair<std::string, double>> timings_seconds;  // per step
    PolicySource policy;
    std::string finished_at;          // UTC ISO 8601
    std::string data_path;            // "one-pass copy" or "libcryptsetup in place"
    std::string data_path_note;       // why a requested copy fell back to sealing in place; empty otherwise

    std::string to_json() const;
};

// Seal the LUKS2 volume of `image` (bare LUKS file, whole-disk image or block device). `build_passphrase`
// must open a keyslot (until seal removes it). Throws AuthError (build passphrase opens nothing and the image
// is not sealed), TangError (the binding could not be made or verified: the build passphrase still works),
// FormatError, BusyError.
SealReport seal(const std::filesystem::path& image, const SecretBuffer& build_passphrase, const SealOptions& options);

// The step names LUKSFORGE_CRASH_AT accepts, in the order seal reaches them.
std::vector<std::string> seal_crash_points();

// --- stamp and clone ------------------------------------------------------------------------------------------

struct StampOptions {
    std::optional<int> partition;
    // Bind each instance to this pin; by default the base binding's own pins (servers and advertisements as
    // recorded in its JWE, like `clevis luks regen`).
    std::optional<PinBinding> binding;
    PolicySource policy;
    // At most this many images may share one volume key (checked and recorded atomically in the ledger).
    std::uint64_t max_instances_per_key = 1;
    std::optional<std::filesystem::path> ledger;
    PinOptions pin_options;
    Pbkdf keyslot_pbkdf = Pbkdf::pbkdf2_fast(1000);
    // Drop keyslots of the base other than its clevis binding (they cannot follow the new volume key).
    bool drop_other_keyslots = false;
    std::function<void(const std::filesystem::path& instance, std::size_t index, std::size_t count)> on_instance;
    // The one-pass data path (read the base once, decrypt with its key, encrypt with the instance's on every
    // core); false = libcryptsetup re-encryption of a sparse copy, also the fallback for ciphers the one-pass
    // path does not implement (the reason is in StampReport::data_path_note).
    bool one_pass = true;
    // One-pass only: sectors that are holes in the base stay holes (they reveal what the base reveals: which
    // sectors were never written). false writes every sector, as libcryptsetup does.
    bool keep_holes = true;
};

struct StampedInstance {
    std::filesystem::path image;
    std::string uuid;
    std::string fingerprint;
    int keyslot = -1;
    int token = -1;
};

struct StampReport {
    std::string base;
    std::string base_fingerprint;
    std::vector<StampedInstance> instances;
    std::string data_path;            // "one-pass" or "libcryptsetup"
    std::string data_path_note;       // why the one-pass path was not used; empty when it was
    std::uint64_t data_bytes = 0;     // one-pass: bytes re-encrypted per instance
    std::uint64_t hole_bytes = 0;     // one-pass: bytes of the data area left as holes per instance
    std::string to_json() const;
};

// Write `count` instances of the sealed `base` into `out_dir` (created if missing) as
// `<base stem>-0001.img`, `-0002`, ... continuing after the highest number already there. Each is created
// 0600 under a hidden temporary name: the one-pass path re-encrypts the base's data area into it with a fresh
// volume key (everything outside the LUKS2 volume copied as it is), formats and binds its header apart (its own
// fresh passphrase and token, verified through Tang; the base binding's passphrase is recovered through Tang
// once) and writes that header last; the libcryptsetup path re-keys a sparse copy, binds, verifies and strips
// the inherited keyslot. Either way an instance is renamed into place only when complete.
StampReport stamp(const std::filesystem::path& base, std::size_t count, const std::filesystem::path& out_dir,
                  const StampOptions& options);

struct CloneOptions {
    std::optional<int> partition;
    PolicySource policy;
    std::uint64_t max_instances_per_key = 1;
    std::optional<std::filesystem::path> ledger;
};
// A sparse 0600 copy that keeps the volume key; refused (LimitError, nothing written) when the ledger already
// holds max_instances_per_key images with the key. Records the base as well when the ledger does not know it.
StampedInstance clone_image(const std::filesystem::path& base, const std::filesystem::path& out,
                            const CloneOptions& options);

// Copy `source` to a new file `destination` (mode 0600, must not exist) keeping holes: only the data extents
// (SEEK_DATA/SEEK_HOLE) are copied, with copy_file_range where the filesystem allows.
void copy_sparse(const std::filesystem::path& source, const std::filesystem::path& destination);

// --- ledger prune -----------------------------------------------------------------------------------------------

// Give back the slots of images that were recorded but never published: a builder killed between the commit
// and the rename (clone, stamp) leaves a committed record whose image does not exist, a leaked slot (the safe
// failure: the limit is never exceeded). Drops (dry_run: only lists) the committed records made on this host
// (LedgerRecord::host) whose image file lies directly in one of `dirs` and does not exist, unless a live
// process's `.NAME.PID.partial` is in that directory (an image being made or published there). An image moved
// or deleted on purpose loses its record too: run it only over directories images stay in. Returns the records
// dropped.
std::vector<LedgerRecord> prune_ledger(Ledger& ledger, const std::vector<std::filesystem::path>& dirs,
                                       bool dry_run = false);

// --- audit ----------------------------------------------------------------------------------------------------

struct AuditOptions {
    std::uint64_t max_per_key = 1;
    // Annotate each key with what the ledger knows, and report the keys it counts more than once that no scanned
    // path holds (with no paths at all: every shared key of the ledger).
    std::optional<std::filesystem::path> ledger;
    bool recursive = false;                           // descend into subdirectories
    // Tang kept apart from the data: scan the plaintext partitions (and unpartitioned non-LUKS images) for
    // private JWKs (a "d" member), and compare every tang binding's trusted keys with them and with the private
    // keys in these host directories (tangd's key directories; missing ones are ignored).
    bool scan_tang_keys = true;
    std::vector<std::filesystem::path> tang_key_dirs = {"/var/db/tang", "/var/cache/tang"};
};

// A private JWK found in a plaintext region of a scanned image, or in a host Tang key directory.
struct FoundTangKey {
    std::string location;                             // "disk.img partition 1, byte 1052672" or a host file
    std::string image;                                // absolute image path; empty for a host key file
    std::optional<int> partition;
    std::optional<std::uint64_t> offset;              // byte offset of the JWK in the image
    std::string kty, alg;                             // e.g. "EC", "ES512" (signing) or "ECMR" (exchange)
    std::string thumbprint;                           // S256, as `jose jwk thp` and tang's kid/thp
};

// A binding whose trusted Tang key's private half is reachable: on the same image or on the audited host.
struct TangKeyExposure {
    std::string volume;                               // "disk.img" or "disk.img partition 2"
    int keyslot = -1;
    std::string url;                                  // the Tang server the binding names
    std::string role;                                 // "signing" (its thp) or "exchange" (its kid: recovery key)
    std::string thumbprint;
    std::string key_location;                         // FoundTangKey::location
    bool same_image = false;                          // the key is inside the image the binding is on
};

// A Clevis binding of an audited volume: a LUKS2 token, or on LUKS1 a luksmeta slot.
struct AuditedBinding {
    int keyslot = -1;
    std::string pin;                                  // empty when unreadable (problem says why)
    std::string config;                               // as `clevis luks list` shows it
    std::string problem;
};

struct AuditedVolume {
    std::string image;
    std::optional<int> partition;
    int luks_version = 2;
    std::string uuid;
    std::string fingerprint;
    std::vector<AuditedBinding> clevis;               // ordered by keyslot
};

// One volume key. With a ledger, a key no scanned path holds is a group too (members empty) when the ledger
// counts more than one instance of it: the farm-wide view of keys other builders recorded.
struct AuditGroup {
    std::string fingerprint;
    std::vector<AuditedVolume> members;               // scanned images with this key (empty: only in the ledger)
    // members.size() or ledger_instances above max_per_key, or ledger_instances above ledger_max_instances
    bool flagged = false;
    std::optional<std::uint64_t> ledger_instances;    // distinct live images the ledger recorded with this key
    std::optional<std::uint64_t> ledger_max_instances;  // the smallest limit its reservations were made under
    std::vector<std::string> ledger_images;           // the images the ledger recorded (live ones, distinct)
};

struct AuditReport {
    std::uint64_t max_per_key = 1;
    std::vector<AuditedVolume> volumes;
    std::vector<AuditGroup> groups;                   // largest first
    std::vector<std::pair<std::string, std::string>> skipped;  // path, reason
    std::vector<FoundTangKey> tang_keys_in_images;    // private JWKs inside scanned images (always a finding)
    std::vector<TangKeyExposure> tang_key_exposures;  // bindings whose trusted key is on the image or the host
    std::size_t flagged_groups() const;
    std::string to_json() const;
    std::string to_text() const;
};

// Each path is an image file, a block device or a directory (its regular files are scanned). `paths` may be
// empty when options.ledger is set: the report is then the ledger's shared keys alone.
AuditReport audit(const std::vector<std::filesystem::path>& paths, const AuditOptions& options);

}  // namespace luksforge
