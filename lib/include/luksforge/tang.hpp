// Tang client: fetch and verify a Tang server's advertisement, decide whether to trust it, and run the
// McCallum-Relyea recovery exchange (POST /rec/{kid}). HTTP goes through libcurl with the limits in
// NetworkOptions; JOSE (signature checks, thumbprints) through libjose.
//
// Trust follows clevis-encrypt-tang: an advertisement is trusted when a verify key whose S256 (or S1)
// thumbprint equals the pinned `thp` signed it, or when it was supplied offline by the caller, or — only on
// explicit request — on first use. Every signature in an advertisement must verify, whatever the trust source.
#pragma once

#include <luksforge/pin.hpp>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace luksforge::tang {

// A verified advertisement.
struct Advertisement {
    // The JWK set (the JWS payload, or the offline JWK set as given), compact JSON: {"keys":[...]}.
    std::string keys_json;
    // S256 thumbprints of the signing (verify) keys and of the exchange (deriveKey) keys, in set order.
    std::vector<std::string> signing_thumbprints;
    std::vector<std::string> exchange_thumbprints;
    // Whether it came as a signed JWS (false: a plain JWK set supplied offline, nothing to verify).
    bool signed_jws = false;
    // S256 and S1 thumbprints of keys from `extra_verify_keys_json` (parse_advertisement) that signed it.
    std::vector<std::string> extra_signer_thumbprints;

    // Whether a verify key of this advertisement has thumbprint `thp` (S256 or S1, as Clevis accepts).
    bool has_signing_key(std::string_view thp) const;
};

// Parse an advertisement given as a JWS (general or flattened JSON serialisation, as `GET /adv` returns) or
// as a plain JWK set, and verify every signature against the verify keys in its payload. Throws TangError
// for an unsigned or badly signed advertisement, FormatError for malformed JSON.
// `extra_verify_keys_json` (a JWK set, e.g. the advertisement an old binding was made with) adds keys trusted
// from elsewhere: tangd signs /adv/{thp} of a rotated-out key with that key too, which links old and new keys.
Advertisement parse_advertisement(std::string_view json, std::string_view extra_verify_keys_json = {});

// The thumbprint of a JWK given as JSON (`alg` "S256" or "S1"), as `jose jwk thp` prints it.
std::string jwk_thumbprint(std::string_view jwk_json, std::string_view alg = "S256");

// The base URL requests for a Clevis `url` go to: the URL as given when it is http:// or https://, and
// "http://" + URL when it has no scheme ("host:port", as curl — and so Clevis — reads it). A trailing '/' is
// dropped. Throws FormatError for other schemes, spaces or control characters, and URLs over 4096 bytes.
// The JWE keeps the URL exactly as given.
std::string request_url(std::string_view url);

// One HTTP connection context (one libcurl easy handle) to one Tang server.
class Client {
public:
    // `url` is the server's base URL as in Clevis's config ("http://tang.example:7500", or "tang:7500"
    // meaning http), read by request_url().
    explicit Client(std::string url, NetworkOptions options = {});
    Client(Client&&) noexcept;
    Client& operator=(Client&&) noexcept;
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;
    ~Client() noexcept;

    // The CURL* easy handle (opaque here so the public header needs no libcurl include).
    void* native_handle() const noexcept;
    const std::string& url() const noexcept;

    // GET /adv (or /adv/{thp} when given), parsed and signature-checked; trust is NOT decided here.
    Advertisement fetch_advertisement(std::optional<std::string_view> thp = std::nullopt);
    // The same, unparsed: the JWS text as served.
    std::string fetch_advertisement_text(std::optional<std::string_view> thp = std::nullopt);
    // POST /rec/{kid} with a public EC JWK (JSON); returns the server's reply JWK as JSON text.
    std::string recover(std::string_view kid, std::string_view request_jwk_json);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// An offline advertisement file (`"adv": FILE`, policy `adv =`), read with the limits network replies have:
// regular files only (a FIFO or device is refused without blocking), at most `max_bytes` (1 MiB).
// Throws NotFoundError, FormatError (not a regular file, too large) or Error.
std::string read_advertisement_file(const std::filesystem::path& file, std::size_t max_bytes = 1 << 20);

// Clevis's tang pin configuration: {"url":..., "thp":..., "adv": FILE-or-object}.
struct Config {
    std::string url;
    std::optional<std::string> thp;
    // The offline advertisement as JSON text (read from the file when `adv` named one).
    std::optional<std::string> adv;
};
// Throws FormatError for malformed config (missing url, adv file missing or not JSON).
Config parse_config(std::string_view config_json);

enum class TrustSource { pinned_thumbprint, offline_advertisement, trust_on_first_use };

struct TrustedAdvertisement {
    Advertisement advertisement;
    TrustSource source = TrustSource::pinned_thumbprint;
};

// Obtain the advertisement for `config` as clevis-encrypt-tang does: the offline one when `adv` is given,
// otherwise GET $url/adv/$thp (or $url/adv). Throws TangError when it is not trusted (the message lists the
// signing-key thumbprints so the caller can pin one) or the pinned thumbprint did not sign it.
TrustedAdvertisement trusted_advertisement(const Config& config, const PinOptions& options);

}  // namespace luksforge::tang
