// Deployment policy: one TOML file saying what every image must carry — which Tang servers (pinned by
// thumbprint or by an offline advertisement), how many of them must answer (t of n: one server → the tang pin,
// several → sss), the volume cipher, the PBKDF of the Clevis keyslot, how much LUKS2 metadata to reserve, and
// how many instances may share one volume key. The schema is documented in docs/policy.md.
#pragma once

#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pin.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace luksforge {

// One problem found in a policy (or in a volume measured against it).
struct PolicyProblem {
    std::string source;       // the policy file's path, or "<policy>" for parsed text
    std::size_t line = 0;     // 1-based line in the policy; 0 when it belongs to no line (e.g. a volume's state)
    std::string message;
    // "FILE:LINE: message" (or "FILE: message" without a line).
    std::string to_string() const;
};

// A policy file that is not even valid TOML: what() is "FILE:LINE: message"; `problem` holds the parts.
class PolicySyntaxError : public FormatError {
public:
    explicit PolicySyntaxError(PolicyProblem where) : FormatError(where.to_string()), problem(std::move(where)) {}
    PolicyProblem problem;
};

struct PolicyTangServer {
    std::string url;
    std::optional<std::string> thp;                // pinned signing-key thumbprint (S256 or S1)
    std::optional<std::filesystem::path> adv;      // offline advertisement (JWS or JWK set), made absolute
    std::size_t line = 0;                          // where its [[tang]] entry starts
    std::size_t url_line = 0, thp_line = 0, adv_line = 0;  // where each setting is (0 = not given)
};

// The instance's TPM2 as one more pin of the policy ([tpm2]: Clevis's tpm2 config, e.g. pcr_ids = "7").
struct PolicyTpm2 {
    std::string config_json;  // {"pcr_ids":"7",...} as clevis_encrypt("tpm2", ...) takes it
    std::size_t line = 0;     // where the [tpm2] table starts
};

// Estimated size of the LUKS2 metadata a binding made under this policy needs.
struct TokenEstimate {
    std::size_t token_bytes = 0;      // the clevis token's JSON
    std::size_t required_json_bytes = 0;  // token + keyslot + a freshly formatted header's own JSON
    bool measured = false;            // true when the token was really encrypted (to the offline advertisements,
                                      // or online) to measure it; false for a per-server estimate
};

// --- room in the LUKS2 header for the image pipeline (lib/src/policy/header_fit.cpp, docs/policy.md) -------
// seal and stamp hold one Clevis token at a time: a new binding replaces the one it succeeds in a single header
// write, after it was verified. The peak is one token plus a few keyslots, a running re-encryption's
// bookkeeping and seal's state record — so a 2-of-3 sss policy fits the 16 KiB metadata that anaconda and
// `cryptsetup luksFormat` make by default.
struct HeaderFit {
    std::size_t needed = 0;     // peak LUKS2 JSON, on-disk bytes (an upper bound, measured sizes rounded up)
    std::size_t available = 0;  // the JSON area: metadata size minus the 4 KiB binary header
    bool fits() const noexcept { return needed <= available; }
};

// Peak of `seal` on an image whose kickstart %post already bound a token of `token_bytes` with stock
// `clevis luks bind` and kept the build keyslot: the largest case (an image %post did not bind, or the
// project's kickstarts, which remove the build keyslot, need less).
HeaderFit seal_header_fit(std::uint64_t metadata_bytes, std::size_t token_bytes);
// Peak of `stamp` on a sealed base whose binding is `token_bytes` long, binding a token of that size: by the
// one-pass data path (AES-XTS plain64: the instance's header is made apart, holding only the new binding) or by
// libcryptsetup re-encryption of a copy (other ciphers, --libcryptsetup).
HeaderFit stamp_header_fit(std::uint64_t metadata_bytes, std::size_t token_bytes, bool one_pass = true);

// What is still to happen to a real volume, for volume_header_fit().
struct PipelineSteps {
    std::size_t new_token_bytes = 0;       // the clevis token to bind (its JSON)
    std::size_t replaced_token_bytes = 0;  // the clevis token it replaces in the same header write; 0 = added
    unsigned rekeyed_keyslots = 0;         // keyslots a re-encryption still to run adds; 0 = no re-encryption
    std::size_t dropped_token_bytes = 0;   // tokens (their JSON) that re-encryption drops with their keyslots
    bool add_state_record = false;         // seal's state record is still to be written
};
// Peak of those steps on the volume's header as it is now.
HeaderFit volume_header_fit(const Volume& volume, const PipelineSteps& steps);

class Policy {
public:
    // LUKS2 metadata sizes libcryptsetup accepts (binary header + JSON area), in bytes.
    static constexpr std::uint64_t metadata_sizes[] = {16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10,
                                                       512 << 10, 1 << 20, 2 << 20, 4 << 20};

    // Parse a policy. A TOML syntax error throws PolicySyntaxError; every other problem
    // (unknown keys, wrong types, bad values) is recorded and reported by check(). `load` throws NotFoundError
    // for a missing file. Relative `adv` paths are resolved against the policy file's directory (`base_dir`).
    static Policy load(const std::filesystem::path& path);
    static Policy parse(std::string_view toml_text, std::string source = "<policy>",
                        std::filesystem::path base_dir = std::filesystem::current_path());

    // Every problem, in line order: schema errors, t > n or t < 1, duplicate URLs, malformed thumbprints,
    // missing or unparsable advertisement files, servers without any trust anchor (unless trust_on_first_use),
    // and a token that would not fit the metadata size. Reading `adv` files happens here, never the network.
    std::vector<PolicyProblem> check() const;
    // Throw FormatError listing every problem (one per line) unless check() is empty.
    void require_valid() const;

    // --- the policy's content ---------------------------------------------------------------------------------
    std::string source;                          // file path or "<policy>"
    std::vector<PolicyTangServer> servers;
    std::optional<PolicyTpm2> tpm2;              // [tpm2]: one more share (t counts it like a server)
    unsigned threshold = 1;                      // t; defaults to 1 when absent
    bool trust_on_first_use = false;
    unsigned max_instances_per_key = 1;          // used by the image pipeline (stamp, audit)
    std::string ledger;                          // ledger file or postgresql:// URL; empty = --ledger / default
    std::string cipher = "aes-xts-plain64";      // required volume cipher (format uses it; verify checks it)
    unsigned key_bits = 512;                     // volume key size in bits (XTS: 512 = AES-256)
    std::optional<std::uint64_t> metadata_bytes; // LUKS2 metadata size to reserve at format; unset = smallest fit
    std::optional<std::uint64_t> keyslots_bytes; // LUKS2 keyslots area at format; unset = libcryptsetup default
    Pbkdf keyslot_pbkdf = Pbkdf::pbkdf2_fast(1000);  // PBKDF of the Clevis keyslot (bind)

    // --- what it means for bind / format / verification --------------------------------------------------------
    struct Pin {
        std::string name;                        // "tang", "tpm2" (a [tpm2] alone) or "sss"
        std::string config_json;                 // Clevis's config for clevis_encrypt / clevis::bind
    };
    Pin pin() const;
    // The image pipeline (seal, stamp) and kickstarts bind on the build host: a [tpm2] there would seal to the
    // build host's TPM, not the instance's. Throws FormatError naming `command` when the policy has [tpm2].
    void require_no_tpm2(std::string_view command) const;
    PinOptions pin_options(const NetworkOptions& network = {}) const;
    // Cipher, key size, metadata and keyslots area: the explicit sizes, or the smallest metadata size the
    // estimated binding fits in.
    FormatOptions format_options() const;
    // Without `online` only offline advertisements (`adv`) are used: the token is measured when every server has
    // one, else estimated per server. With `online`, the other servers' advertisements are fetched (with these
    // limits, trusted as the policy says) so the token is always measured exactly; TangError when that fails.
    TokenEstimate estimate_token(const std::optional<NetworkOptions>& online = std::nullopt) const;
    // Whether seal and stamp fit LUKS2 metadata of `metadata_bytes` with this policy's token (seal_header_fit,
    // stamp_header_fit); for sss, also the most servers of the same kind that would.
    struct PipelineFit {
        std::uint64_t metadata_bytes = 0;
        TokenEstimate token;
        HeaderFit seal, stamp;
        std::optional<unsigned> max_servers;  // sss only: the most Tang servers for which both fit (estimated)
        bool stamp_one_pass = true;           // stamp measured for its one-pass data path (the policy's cipher is AES-XTS)
        bool fits() const noexcept { return seal.fits() && stamp.fits(); }
    };
    PipelineFit pipeline_fit(std::uint64_t metadata_bytes,
                             const std::optional<NetworkOptions>& online = std::nullopt) const;
    // Problems of an existing volume under this policy: cipher, key size, metadata smaller than required,
    // Clevis keyslots with a weaker PBKDF, and — when it has no Clevis binding yet — no room for one
    // (binding_fits with `online`).
    std::vector<PolicyProblem> verify_volume(const Volume& volume,
                                             const std::optional<NetworkOptions>& online = std::nullopt) const;
    // Whether a new binding (token + keyslot) fits the volume's metadata as it is now; the problem otherwise.
    std::optional<PolicyProblem> binding_fits(const Volume& volume,
                                              const std::optional<NetworkOptions>& online = std::nullopt) const;

    // Set by parse(): schema problems found while reading the TOML.
    std::vector<PolicyProblem> parse_problems;
    // Lines of individual settings, for problems found later (0 = not given in the file).
    std::size_t threshold_line = 0, metadata_line = 0, keyslots_line = 0, cipher_line = 0, key_bits_line = 0,
                pbkdf_line = 0, servers_line = 0;
};

}  // namespace luksforge
