// LUKS2 volumes over libcryptsetup: format with a fresh volume key, keyslots, tokens, inspection with a
// volume-key fingerprint, and offline re-keying by re-encryption.
//
// libcryptsetup is not thread-safe: every call into it made by luksforge is serialised by one process-wide
// mutex. A Volume also holds an advisory lock (/run/luksforge) on its device for its whole life, so two
// luksforge processes never modify one volume at the same time.
#pragma once

#include <luksforge/secret.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct crypt_device;

namespace luksforge {

// Key derivation for one keyslot.
struct Pbkdf {
    enum class Type { argon2id, argon2i, pbkdf2 };
    Type type = Type::argon2id;
    std::string hash = "sha256";   // pbkdf2 hash (argon2 ignores it)
    std::uint32_t iterations = 0;  // pbkdf2 iterations, or argon2 time cost; 0 = benchmark to `time_ms`
    std::uint32_t memory_kib = 0;  // argon2 memory cost (KiB); 0 = libcryptsetup default (≤ 1 GiB)
    std::uint32_t parallel = 0;    // argon2 threads; 0 = libcryptsetup default (≤ 4)
    std::uint32_t time_ms = 0;     // benchmark target when iterations == 0; 0 = libcryptsetup default (2000 ms)

    // Cheap, fixed-cost pbkdf2 as Clevis uses for its random 320-bit passphrases (no benchmark).
    static Pbkdf pbkdf2_fast(std::uint32_t iterations = 1000) { return {Type::pbkdf2, "sha256", iterations, 0, 0, 0}; }
    static std::string_view type_name(Type t) noexcept;
    static Type parse_type(std::string_view name);  // throws FormatError
};

struct FormatOptions {
    std::string cipher = "aes";
    std::string cipher_mode = "xts-plain64";
    std::size_t volume_key_bytes = 64;          // 512-bit key: AES-256 in XTS mode
    std::uint32_t sector_size = 0;              // 0 = 4096 where the device allows it, else 512
    std::optional<Pbkdf> pbkdf;                 // for keyslots added later without their own Pbkdf
    std::string label;
    std::string subsystem;
    std::optional<std::string> uuid;            // random unless given
    std::uint64_t metadata_bytes = 0;           // LUKS2 JSON area incl. binary header; 0 = 16 KiB default
    std::uint64_t keyslots_bytes = 0;           // keyslots area; 0 = libcryptsetup default
    const SecretBuffer* volume_key = nullptr;   // supply a volume key instead of a fresh one from the CSPRNG
};

struct Keyslot {
    int id = -1;
    bool bound_to_segment = true;     // false for "unbound" keyslots (e.g. the new key during re-encryption)
    std::size_t key_bytes = 0;
    std::string priority;             // "normal", "prefer", "ignore"
    Pbkdf pbkdf;
};

struct Token {
    int id = -1;
    std::string type;                 // e.g. "clevis", "systemd-tpm2"
    std::string json;                 // the token's JSON text as stored
    std::vector<int> keyslots;
};

struct Inspection {
    std::string path;
    std::string uuid;
    std::string label;
    std::string subsystem;
    std::string cipher;               // "aes-xts-plain64"
    std::size_t volume_key_bytes = 0;
    std::uint32_t sector_size = 0;
    std::uint64_t data_offset_bytes = 0;
    std::uint64_t metadata_bytes = 0;
    std::uint64_t keyslots_bytes = 0;
    std::uint64_t device_bytes = 0;
    bool reencryption_in_progress = false;
    std::vector<Keyslot> keyslots;
    std::vector<Token> tokens;
    // Identifies the volume key without revealing it: SHA-256 over the public LUKS2 digest object (type,
    // hash, iterations, salt, digest). Clones of one image share it; two volumes with different volume keys
    // never do. (Re-using one key in a second, separately formatted header gives another fingerprint: the
    // digest salt differs. Clones — the case that matters for NBDE — are always caught.) LUKS1: the same over
    // the header's master-key digest (mk-digest, its salt and iterations, hash-spec) written as the LUKS2 digest
    // object `cryptsetup convert` makes of it, so a volume keeps its fingerprint when converted.
    std::string fingerprint;          // lowercase hex, 64 characters

    std::string to_json() const;      // the `luksforge inspect --json` object
};

struct RekeyProgress {
    std::uint64_t done_bytes = 0;
    std::uint64_t total_bytes = 0;
};

struct RekeyOptions {
    // Keep the cipher unless set.
    std::optional<std::string> cipher;
    std::optional<std::string> cipher_mode;
    // Keyslots whose passphrase was not supplied are removed only when this is set; otherwise rekey refuses.
    // Their ids are unassigned from every token; the tokens themselves stay (as with remove_keyslot()).
    bool drop_other_keyslots = false;
    // Also remove the tokens left assigned to no keyslot by dropping keyslots (as remove_keyslot_and_tokens()
    // does), e.g. the clevis token of a dropped keyslot. Tokens that had no keyslot to begin with are kept.
    bool drop_orphaned_tokens = false;
    // Return false to pause re-encryption; it can be resumed with another rekey call.
    std::function<bool(const RekeyProgress&)> progress;
    // Largest chunk re-encrypted between two header commits (rounded down to 512-byte sectors); 0 = the
    // libcryptsetup default. Smaller chunks mean finer-grained progress and resumption.
    std::uint64_t max_hotzone_bytes = 0;
};

struct RekeyResult {
    std::string old_fingerprint;
    std::string new_fingerprint;
    // old keyslot id → new keyslot id, for every keyslot that survived. Tokens were reassigned accordingly.
    std::vector<std::pair<int, int>> keyslot_map;
    // false when the progress callback paused re-encryption; call rekey() again to resume.
    bool completed = true;
};

class Volume {
public:
    enum class Access { read_only, read_write };

    // Load an existing LUKS2 header. Throws NotFoundError (missing), FormatError (not LUKS, or LUKS1),
    // BusyError (locked by another luksforge process, or read_write on a device in use).
    static Volume open(const std::filesystem::path& device, Access access = Access::read_write);
    // Load any LUKS header, LUKS1 included, for inspection only; nullopt when the device is not LUKS.
    static std::optional<Volume> probe(const std::filesystem::path& device);

    // Format `device` (a file, partition or loop device) as LUKS2 with a fresh volume key. The returned
    // Volume keeps the volume key in libcryptsetup's memory, so add_keyslot_by_volume_key() needs no PBKDF.
    // Throws FormatError when the device is too small for header and at least one sector of data.
    static Volume format(const std::filesystem::path& device, const FormatOptions& options = {});
    // Create or extend a regular file to `bytes` (sparse) before formatting; never shrinks.
    static void ensure_file_size(const std::filesystem::path& file, std::uint64_t bytes);

    Volume(Volume&&) noexcept;
    Volume& operator=(Volume&&) noexcept;
    Volume(const Volume&) = delete;
    Volume& operator=(const Volume&) = delete;
    ~Volume() noexcept;

    crypt_device* native_handle() const noexcept;
    const std::filesystem::path& path() const noexcept;
    int luks_version() const;   // 1 or 2

    // --- keyslots -------------------------------------------------------------------------------------------
    // Add a keyslot for `new_passphrase`, unlocking with an existing passphrase (one PBKDF derivation of the
    // old slot). `slot` -1 = first free. Returns the keyslot id. Throws AuthError on a wrong passphrase.
    int add_keyslot(std::string_view existing_passphrase, std::string_view new_passphrase,
                    const std::optional<Pbkdf>& pbkdf = std::nullopt, int slot = -1);
    // Add a keyslot using a volume key: the one format() left in memory (`volume_key` null) or a given one.
    int add_keyslot_by_volume_key(std::string_view new_passphrase, const std::optional<Pbkdf>& pbkdf = std::nullopt,
                                  int slot = -1, const SecretBuffer* volume_key = nullptr);
    // Destroy keyslot `slot`. As libcryptsetup (and `cryptsetup luksKillSlot`) do, its id is unassigned from
    // every token but no token is removed, even one left assigned to no keyslot: a caller naming a keyslot
    // never loses metadata it did not name (a token of another tool may be re-assigned later). Throws
    // NotFoundError when the slot does not exist.
    void remove_keyslot(int slot);
    // Remove `slot` together with the tokens that serve only it, as `clevis luks unbind` does: every token
    // assigned to `slot` and to no other keyslot is removed first (one atomic header write each), then the
    // keyslot. A crash in between leaves at worst a keyslot without its token (it still opens with its
    // passphrase), never a token pointing at a missing keyslot. Tokens also assigned to other keyslots only
    // lose `slot`. Returns the ids of the removed tokens. Throws NotFoundError when the slot does not exist.
    std::vector<int> remove_keyslot_and_tokens(int slot);
    // The first half of remove_keyslot_and_tokens(): remove the tokens assigned to `slot` and to no other
    // keyslot, keep the keyslot. Returns their ids.
    std::vector<int> remove_tokens_only_of(int slot);
    // Which keyslot `passphrase` opens (`slot` -1 = any); nullopt when it opens none. Never throws AuthError.
    std::optional<int> test_passphrase(std::string_view passphrase, int slot = -1) const;
    // Recover the volume key (one PBKDF derivation). Throws AuthError on a wrong passphrase.
    SecretBuffer volume_key(std::string_view passphrase, int slot = -1) const;
    std::vector<Keyslot> keyslots() const;
    std::optional<Keyslot> keyslot(int slot) const;

    // --- tokens ---------------------------------------------------------------------------------------------
    std::vector<Token> tokens() const;
    std::optional<Token> token(int id) const;
    // Store token JSON (must carry "type" and "keyslots"); `id` -1 = first free. Returns the token id.
    int set_token(std::string_view json, int id = -1);
    void remove_token(int id);
    void assign_token(int token, int keyslot);
    void unassign_token(int token, int keyslot);

    // --- inspection and re-keying ---------------------------------------------------------------------------
    Inspection inspect() const;
    std::string fingerprint() const;
    // Replace the volume key by offline re-encryption of the data area. Every keyslot opened by one of
    // `passphrases` survives (same PBKDF parameters); tokens follow their keyslots. Resumes an interrupted
    // re-encryption of this volume when one is in progress.
    RekeyResult rekey(const std::vector<std::string_view>& passphrases, const RekeyOptions& options = {});

private:
    struct Impl;
    explicit Volume(std::unique_ptr<Impl> impl) noexcept;
    std::unique_ptr<Impl> impl_;
};

// The luksforge lock on a device without loading it (used by pipelines that hold a device across steps).
class DeviceLock {
public:
    static DeviceLock acquire(const std::filesystem::path& device, bool exclusive = true);  // BusyError when held
    DeviceLock(DeviceLock&&) noexcept;
    DeviceLock& operator=(DeviceLock&&) noexcept;
    ~DeviceLock() noexcept;

private:
    explicit DeviceLock(int fd) noexcept : fd_(fd) {}
    int fd_ = -1;
};

}  // namespace luksforge
