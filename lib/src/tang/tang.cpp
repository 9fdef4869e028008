// Tang client over libcurl and libjose: advertisement fetch and verification, trust decision, recovery.
#include <luksforge/tang.hpp>

#include "tang/curl_api.hpp"
#include "util/error_util.hpp"
#include "util/jose_util.hpp"
#include "util/json_util.hpp"

#include <luksforge/error.hpp>
#include <luksforge/secret.hpp>

#include <curl/curl.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>

namespace luksforge {
namespace detail {

// ---- libjose helpers (jose_util.hpp) ---------------------------------------------------------------------

JoseContext::JoseContext() : cfg_(jose_cfg()) {
    if (!cfg_) throw Error(ENOMEM, "cannot create a libjose context");
    jose_cfg_set_err_func(cfg_.get(), &JoseContext::on_error, state_.get());
}

void JoseContext::on_error(void* misc, const char*, int, uint64_t, const char* fmt, va_list ap) noexcept {
    try {
        char buffer[512];
        std::vsnprintf(buffer, sizeof buffer, fmt, ap);
        static_cast<State*>(misc)->message = buffer;
    } catch (...) {
        // Losing a diagnostic is better than unwinding through libjose.
    }
}

std::string JoseContext::last_error(std::string_view fallback) const {
    return state_->message.empty() ? std::string(fallback) : state_->message;
}

std::string jose_thumbprint(const json_t* jwk, const char* alg) {
    JsonPtr thp = json_take(jose_jwk_thp(nullptr, jwk, alg));
    return thp && json_is_string(thp.get()) ? std::string(json_string_value(thp.get())) : std::string();
}

bool thumbprint_matches(const json_t* jwk, std::string_view thp) {
    if (thp.empty()) return false;
    for (const char* alg : {"S256", "S1"})
        if (jose_thumbprint(jwk, alg) == thp) return true;
    return false;
}

CompactJwe split_compact_jwe(std::string_view jwe) {
    while (!jwe.empty() && (jwe.back() == '\n' || jwe.back() == '\r' || jwe.back() == ' ')) jwe.remove_suffix(1);
    CompactJwe result;
    std::size_t start = 0;
    for (std::size_t i = 0; i < 5; ++i) {
        std::size_t dot = jwe.find('.', start);
        if (i < 4 && dot == std::string_view::npos)
            throw FormatError("not a compact JWE: expected 5 dot-separated parts, found " + std::to_string(i + 1));
        if (i == 4 && dot != std::string_view::npos)
            throw FormatError("not a compact JWE: more than 5 dot-separated parts");
        result.parts[i] = jwe.substr(start, (i < 4 ? dot : jwe.size()) - start);
        start = dot + 1;
    }
    if (result.parts[0].empty()) throw FormatError("not a compact JWE: empty protected header");
    // Anything outside unpadded base64url (spaces, '=', '+', '/') would be cut or mangled on its way through a
    // LUKS2 token and back.
    static const char* names[] = {"protected header", "encrypted key", "IV", "ciphertext", "tag"};
    for (std::size_t i = 0; i < 5; ++i)
        if (!luksforge::is_base64url(result.parts[i]))
            throw FormatError(std::string("not a compact JWE: its ") + names[i] + " is not base64url");
    return result;
}

JsonPtr decode_b64_json(std::string_view b64, std::string_view what) {
    JsonPtr text = json_take(json_stringn(b64.data(), b64.size()));
    JsonPtr decoded = json_take(jose_b64_dec_load(text.get()));
    if (!json_is_object(decoded.get()))
        throw FormatError(std::string(what) + " is not base64url-encoded JSON object");
    return decoded;
}

}  // namespace detail

namespace tang {
namespace {

using detail::JsonPtr;
using detail::json_take;
using detail::json_share;

// ---- libcurl ---------------------------------------------------------------------------------------------

void global_curl_init() {
    static std::once_flag once;
    static CURLcode status = CURLE_OK;
    std::call_once(once, [] { status = detail::curl().global_init(CURL_GLOBAL_DEFAULT); });
    if (status != CURLE_OK)
        throw TangError(std::string("cannot initialise libcurl: ") + detail::curl().easy_strerror(status));
}

struct CurlDeleter {
    void operator()(CURL* curl) const noexcept { detail::curl().easy_cleanup(curl); }
};
struct SlistDeleter {
    void operator()(curl_slist* list) const noexcept { detail::curl().slist_free_all(list); }
};

// State the C callbacks touch; they only record, never throw.
struct Transfer {
    std::string body;
    std::size_t max_bytes = 0;
    bool too_large = false;
    const std::atomic<bool>* cancel = nullptr;
};

extern "C" size_t on_body(char* data, size_t size, size_t count, void* user) noexcept {
    auto* transfer = static_cast<Transfer*>(user);
    try {
        const std::size_t bytes = size * count;
        if (transfer->body.size() + bytes > transfer->max_bytes) {
            transfer->too_large = true;
            return 0;  // makes libcurl abort with CURLE_WRITE_ERROR
        }
        transfer->body.append(data, bytes);
        return bytes;
    } catch (...) {
        return 0;
    }
}

extern "C" int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) noexcept {
    auto* transfer = static_cast<Transfer*>(user);
    return transfer->cancel != nullptr && transfer->cancel->load() ? 1 : 0;
}

// application/json, application/jose+json, application/jwk+json, application/jwk-set+json, application/jose
// (parameters such as "; charset=utf-8" ignored, case-insensitive).
bool json_media_type(std::string_view type) {
    type = type.substr(0, type.find(';'));
    while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
    std::string lower(type);
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return lower == "application/json" || lower == "application/jose+json" || lower == "application/jwk+json" ||
           lower == "application/jwk-set+json" || lower == "application/jose";
}

std::string trim_url(std::string url) {
    while (!url.empty() && url.back() == '/') url.pop_back();
    return url;
}

}  // namespace

struct Client::Impl {
    std::string url;
    NetworkOptions options;
    std::unique_ptr<CURL, CurlDeleter> curl;

    struct Response {
        long status = 0;
        std::string body;
        std::string content_type;
    };

    Response perform(const std::string& target, const std::string* post_body, const char* content_type) {
        const detail::CurlApi& http = detail::curl();
        CURL* handle = curl.get();
        http.easy_reset(handle);
        Transfer transfer;
        transfer.max_bytes = options.max_response_bytes;
        transfer.cancel = options.cancel.get();
        char error_buffer[CURL_ERROR_SIZE] = {};

        std::unique_ptr<curl_slist, SlistDeleter> headers;
        http.easy_setopt(handle, CURLOPT_URL, target.c_str());
        http.easy_setopt(handle, CURLOPT_PROTOCOLS_STR, "http,https");
        http.easy_setopt(handle, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        http.easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);  // timeouts without SIGALRM: safe in threads (sss)
        http.easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS, options.connect_timeout_ms);
        http.easy_setopt(handle, CURLOPT_TIMEOUT_MS, options.total_timeout_ms);
        http.easy_setopt(handle, CURLOPT_FOLLOWLOCATION, options.follow_redirects ? 1L : 0L);
        http.easy_setopt(handle, CURLOPT_MAXREDIRS, 3L);
        http.easy_setopt(handle, CURLOPT_ERRORBUFFER, error_buffer);
        http.easy_setopt(handle, CURLOPT_WRITEFUNCTION, &on_body);
        http.easy_setopt(handle, CURLOPT_WRITEDATA, &transfer);
        http.easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, &on_progress);
        http.easy_setopt(handle, CURLOPT_XFERINFODATA, &transfer);
        http.easy_setopt(handle, CURLOPT_NOPROGRESS, 0L);
        http.easy_setopt(handle, CURLOPT_USERAGENT, "luksforge");
        if (options.max_response_bytes > 0)
            http.easy_setopt(handle, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(options.max_response_bytes));
        if (post_body != nullptr) {
            headers.reset(http.slist_append(nullptr, (std::string("Content-Type: ") + content_type).c_str()));
            http.easy_setopt(handle, CURLOPT_HTTPHEADER, headers.get());
            http.easy_setopt(handle, CURLOPT_POSTFIELDS, post_body->c_str());
            http.easy_setopt(handle, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(post_body->size()));
        }

        const CURLcode rc = http.easy_perform(handle);
        http.easy_setopt(handle, CURLOPT_ERRORBUFFER, nullptr);
        const std::string where = (post_body ? "POST " : "GET ") + detail::excerpt(target, 300);
        const std::string detail = error_buffer[0] ? std::string(error_buffer) : http.easy_strerror(rc);
        switch (rc) {
        case CURLE_OK:
            break;
        case CURLE_COULDNT_CONNECT:
            throw TangError("Tang server unreachable: " + where + ": " + detail, ECONNREFUSED);
        case CURLE_COULDNT_RESOLVE_HOST:
            throw TangError("Tang server host not found: " + where + ": " + detail, EHOSTUNREACH);
        case CURLE_OPERATION_TIMEDOUT:
            throw TangError("Tang server timed out: " + where + " (connect timeout " +
                                std::to_string(options.connect_timeout_ms) + " ms, total " +
                                std::to_string(options.total_timeout_ms) + " ms): " + detail,
                            ETIMEDOUT);
        case CURLE_ABORTED_BY_CALLBACK:
            throw TangError("Tang request cancelled: " + where, ECANCELED);
        case CURLE_WRITE_ERROR:
        case CURLE_FILESIZE_EXCEEDED:
            if (transfer.too_large || rc == CURLE_FILESIZE_EXCEEDED)
                throw TangError("Tang server response larger than " + std::to_string(options.max_response_bytes) +
                                    " bytes: " + where,
                                EMSGSIZE);
            [[fallthrough]];
        case CURLE_UNSUPPORTED_PROTOCOL:
            if (rc == CURLE_UNSUPPORTED_PROTOCOL)
                throw TangError("unsupported URL (only http and https): " + where, EPROTONOSUPPORT);
            [[fallthrough]];
        default:
            throw TangError("Tang request failed: " + where + ": " + detail, EIO);
        }

        Response response;
        http.easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &response.status);
        char* type = nullptr;
        if (http.easy_getinfo(handle, CURLINFO_CONTENT_TYPE, &type) == CURLE_OK && type != nullptr)
            response.content_type = type;
        response.body = std::move(transfer.body);
        if (response.status >= 300 && response.status < 400) {
            char* location = nullptr;
            http.easy_getinfo(handle, CURLINFO_REDIRECT_URL, &location);
            throw TangError("Tang server redirected (HTTP " + std::to_string(response.status) + ") " + where +
                                (location ? std::string(" to ") + location : std::string()) +
                                "; redirects are not followed",
                            EPROTO);
        }
        if (response.status != 200) {
            std::string meaning;
            switch (response.status) {
            case 400: meaning = " Bad Request"; break;
            case 403: meaning = " Forbidden (key not usable for recovery)"; break;
            case 404: meaning = " Not Found"; break;
            case 500: meaning = " Internal Server Error"; break;
            default: break;
            }
            throw TangError("Tang server answered HTTP " + std::to_string(response.status) + meaning + ": " + where,
                            response.status == 404 ? ENOENT : EPROTO);
        }
        // tangd labels /adv application/jose+json and /rec application/jwk+json; an HTML page (a captive portal,
        // a proxy's error page) or any other declared type is not a Tang answer. No Content-Type is accepted,
        // as Clevis (curl) accepts it.
        if (!response.content_type.empty() && !json_media_type(response.content_type))
            throw TangError("not a Tang server: " + where + " answered with Content-Type '" +
                                detail::excerpt(response.content_type, 64) +
                                "' (expected application/jose+json or application/jwk+json)",
                            EPROTO);
        return response;
    }
};

namespace {

// The keys of a JWK set with `op` in key_ops (as `jose jwk use -u OP` selects them).
JsonPtr keys_for(const json_t* keys, const char* op) {
    JsonPtr selected = json_take(json_array());
    std::size_t index;
    json_t* key;
    json_array_foreach(keys, index, key) {
        if (jose_jwk_prm(nullptr, key, true, op)) json_array_append(selected.get(), key);
    }
    return selected;
}

std::string join(const std::vector<std::string>& items, std::string_view separator) {
    std::string result;
    for (const auto& item : items) {
        if (!result.empty()) result += separator;
        result += item;
    }
    return result;
}

}  // namespace

bool Advertisement::has_signing_key(std::string_view thp) const {
    for (const auto& extra : extra_signer_thumbprints)
        if (extra == thp) return true;
    JsonPtr set = detail::json_parse(keys_json, "advertisement");
    JsonPtr verify = keys_for(json_object_get(set.get(), "keys"), "verify");
    std::size_t index;
    json_t* key;
    json_array_foreach(verify.get(), index, key) {
        if (detail::thumbprint_matches(key, thp)) return true;
    }
    return false;
}

Advertisement parse_advertisement(std::string_view json, std::string_view extra_verify_keys_json) {
    JsonPtr root = detail::json_parse(json, "Tang advertisement");
    if (!json_is_object(root.get())) throw FormatError("Tang advertisement is not a JSON object");

    Advertisement adv;
    JsonPtr keys_set;
    const json_t* payload = json_object_get(root.get(), "payload");
    if (payload != nullptr) {
        if (!json_is_string(payload)) throw FormatError("Tang advertisement: JWS payload is not a string");
        keys_set = json_take(jose_b64_dec_load(payload));
        if (!json_is_object(keys_set.get()))
            throw FormatError("Tang advertisement: JWS payload is not base64url-encoded JSON");
        adv.signed_jws = true;
    } else if (json_is_array(json_object_get(root.get(), "keys"))) {
        keys_set = json_share(root.get());
    } else {
        throw FormatError("Tang advertisement is neither a JWS nor a JWK set (no \"payload\" or \"keys\")");
    }
    const json_t* keys = json_object_get(keys_set.get(), "keys");
    if (!json_is_array(keys) || json_array_size(keys) == 0)
        throw FormatError("Tang advertisement: payload has no \"keys\" array");

    JsonPtr verify = keys_for(keys, "verify");
    JsonPtr derive = keys_for(keys, "deriveKey");
    if (json_array_size(verify.get()) == 0) throw TangError("Tang advertisement has no signing (verify) keys", EBADMSG);
    if (json_array_size(derive.get()) == 0)
        throw TangError("Tang advertisement has no exchange (deriveKey) keys", EBADMSG);

    if (adv.signed_jws) {
        // Normalise a flattened JWS into general form so both shapes take one path.
        JsonPtr signatures = json_share(json_object_get(root.get(), "signatures"));
        if (!signatures && json_object_get(root.get(), "signature")) {
            signatures = json_take(json_array());
            JsonPtr sig = json_take(json_object());
            for (const char* field : {"protected", "header", "signature"})
                if (json_t* v = json_object_get(root.get(), field)) json_object_set(sig.get(), field, v);
            json_array_append(signatures.get(), sig.get());
        }
        if (!json_is_array(signatures.get()) || json_array_size(signatures.get()) == 0)
            throw TangError("Tang advertisement is unsigned (no JWS signatures)", EBADMSG);
        JsonPtr general = json_take(json_pack("{s:O,s:O}", "payload", payload, "signatures", signatures.get()));
        JsonPtr extra = json_take(json_array());
        if (!extra_verify_keys_json.empty()) {
            JsonPtr extra_set = detail::json_parse(extra_verify_keys_json, "trusted keys");
            const json_t* extra_keys = json_object_get(extra_set.get(), "keys");
            if (!extra_keys && json_is_array(extra_set.get())) extra_keys = extra_set.get();
            extra = keys_for(extra_keys, "verify");
        }
        // Every signature must verify against one of the advertised (or extra trusted) verify keys...
        std::size_t index;
        json_t* sig;
        json_array_foreach(signatures.get(), index, sig) {
            if (jose_jws_ver(nullptr, general.get(), sig, verify.get(), false)) continue;
            bool by_extra = false;
            std::size_t k;
            json_t* key;
            json_array_foreach(extra.get(), k, key) {
                if (!jose_jws_ver(nullptr, general.get(), sig, key, false)) continue;
                by_extra = true;
                for (const char* alg : {"S256", "S1"})
                    adv.extra_signer_thumbprints.push_back(detail::jose_thumbprint(key, alg));
            }
            if (!by_extra)
                throw TangError("Tang advertisement signature " + std::to_string(index + 1) + " of " +
                                    std::to_string(json_array_size(signatures.get())) +
                                    " does not verify with the advertised signing keys (forged, or by a "
                                    "rotated-out key: pin a current thumbprint)",
                                EBADMSG);
        }
        // ...and every advertised verify key must have signed (as `jose jws ver -a` in clevis-encrypt-tang).
        if (!jose_jws_ver(nullptr, general.get(), nullptr, verify.get(), true))
            throw TangError("Tang advertisement is missing signatures: not every signing key signed it", EBADMSG);
    }

    std::size_t index;
    json_t* key;
    // A key without a thumbprint (e.g. an EC key missing "crv") can be neither pinned nor named by a kid: refuse
    // the advertisement instead of listing an empty thumbprint (found by fuzz/fuzz_advertisement).
    auto thumbprint_of = [](const json_t* k, const char* role, std::size_t i) {
        std::string thp = detail::jose_thumbprint(k);
        if (thp.empty())
            throw FormatError("Tang advertisement: " + std::string(role) + " key " + std::to_string(i + 1) +
                              " is not a valid JWK (no thumbprint can be computed)");
        return thp;
    };
    json_array_foreach(verify.get(), index, key) adv.signing_thumbprints.push_back(thumbprint_of(key, "signing", index));
    json_array_foreach(derive.get(), index, key) adv.exchange_thumbprints.push_back(thumbprint_of(key, "exchange", index));
    adv.keys_json = detail::json_dump(keys_set.get(), JSON_COMPACT | JSON_SORT_KEYS);
    return adv;
}

std::string jwk_thumbprint(std::string_view jwk_json, std::string_view alg) {
    JsonPtr jwk = detail::json_parse(jwk_json, "JWK");
    std::string thp = detail::jose_thumbprint(jwk.get(), std::string(alg).c_str());
    if (thp.empty()) throw FormatError("cannot compute the " + std::string(alg) + " thumbprint of this JWK");
    return thp;
}

std::string request_url(std::string_view url) {
    if (url.empty()) throw FormatError("Tang URL is empty");
    if (url.size() > 4096)
        throw FormatError("Tang URL is too long (" + std::to_string(url.size()) + " bytes, at most 4096): '" +
                          detail::excerpt(url) + "'");
    for (const char c : url)
        if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f)
            throw FormatError("Tang URL contains a space or control character: '" + detail::excerpt(url) + "'");
    std::string result = trim_url(std::string(url));
    const std::size_t scheme_end = result.find("://");
    if (scheme_end == std::string::npos) return "http://" + result;  // as curl (and so Clevis) reads "host:port"
    std::string scheme = result.substr(0, scheme_end);
    for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme != "http" && scheme != "https")
        throw FormatError("Tang URL must be http:// or https:// (or have no scheme, meaning http): '" +
                          detail::excerpt(url) + "'");
    return scheme + result.substr(scheme_end);
}

Client::Client(std::string url, NetworkOptions options) : impl_(std::make_unique<Impl>()) {
    global_curl_init();
    impl_->url = request_url(url);
    impl_->options = std::move(options);
    impl_->curl.reset(detail::curl().easy_init());
    if (!impl_->curl) throw TangError("cannot create a libcurl handle", ENOMEM);
}

Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() noexcept = default;

void* Client::native_handle() const noexcept { return impl_ ? impl_->curl.get() : nullptr; }
const std::string& Client::url() const noexcept { return impl_->url; }

std::string Client::fetch_advertisement_text(std::optional<std::string_view> thp) {
    std::string target = impl_->url + "/adv";
    if (thp && !thp->empty()) target += "/" + std::string(*thp);
    return impl_->perform(target, nullptr, nullptr).body;
}

Advertisement Client::fetch_advertisement(std::optional<std::string_view> thp) {
    std::string target = impl_->url + "/adv";
    if (thp && !thp->empty()) target += "/" + std::string(*thp);
    const std::string body = fetch_advertisement_text(thp);
    try {
        return parse_advertisement(body);
    } catch (const FormatError& e) {
        throw TangError("malformed advertisement from " + target + ": " + e.what(), EBADMSG);
    } catch (const TangError& e) {
        throw TangError(std::string(e.what()) + " (from " + target + ")", e.code().value());
    }
}

std::string Client::recover(std::string_view kid, std::string_view request_jwk_json) {
    const std::string body(request_jwk_json);
    auto response = impl_->perform(impl_->url + "/rec/" + std::string(kid), &body, "application/jwk+json");
    return response.body;
}

std::string read_advertisement_file(const std::filesystem::path& file, std::size_t max_bytes) {
    const std::string name = detail::excerpt(file.string());
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below anyway.
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        const int err = errno;
        if (err == ENOENT) throw NotFoundError("advertisement file '" + name + "' not found");
        throw Error(err, "cannot open advertisement file '" + name + "'");
    }
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw Error(errno, "cannot stat advertisement file '" + name + "'");
    if (!S_ISREG(st.st_mode))
        throw FormatError("advertisement file '" + name + "' is not a regular file (" +
                          (S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISCHR(st.st_mode) ? "a character device"
                                                 : S_ISBLK(st.st_mode) ? "a block device"
                                                 : S_ISDIR(st.st_mode) ? "a directory" : "not a file") +
                          ")");
    if (static_cast<std::uint64_t>(st.st_size) > max_bytes)
        throw FormatError("advertisement file '" + name + "' is larger than " + std::to_string(max_bytes) + " bytes");
    std::string text;
    char buffer[65536];
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw Error(errno, "cannot read advertisement file '" + name + "'");
        if (n == 0) break;
        if (text.size() + static_cast<std::size_t>(n) > max_bytes)
            throw FormatError("advertisement file '" + name + "' is larger than " + std::to_string(max_bytes) +
                              " bytes");
        text.append(buffer, static_cast<std::size_t>(n));
    }
    return text;
}

Config parse_config(std::string_view config_json) {
    JsonPtr config = detail::json_parse(config_json, "tang pin configuration");
    if (!json_is_object(config.get())) throw FormatError("tang pin configuration must be a JSON object");
    Config result;
    const json_t* url = json_object_get(config.get(), "url");
    if (!json_is_string(url) || json_string_length(url) == 0)
        throw FormatError("tang pin configuration: missing the required \"url\" property");
    result.url = json_string_value(url);
    if (const json_t* thp = json_object_get(config.get(), "thp")) {
        if (!json_is_string(thp) || json_string_length(thp) == 0)
            throw FormatError("tang pin configuration: \"thp\" must be a non-empty string");
        result.thp = json_string_value(thp);
    }
    if (const json_t* adv = json_object_get(config.get(), "adv")) {
        if (json_is_object(adv)) {
            result.adv = detail::json_dump(adv);
        } else if (json_is_string(adv)) {
            const std::string file = json_string_value(adv);
            result.adv = read_advertisement_file(file);
            JsonPtr parsed = detail::json_parse(*result.adv, "advertisement file '" + detail::excerpt(file) + "'");
            if (!json_is_object(parsed.get()))
                throw FormatError("advertisement file '" + detail::excerpt(file) + "' is malformed");
        } else {
            throw FormatError("tang pin configuration: \"adv\" must be a file name or a JSON object");
        }
    }
    // Other properties are ignored, as clevis-encrypt-tang ignores them.
    return result;
}

TrustedAdvertisement trusted_advertisement(const Config& config, const PinOptions& options) {
    TrustedAdvertisement result;
    if (config.adv) {
        try {
            result.advertisement = parse_advertisement(*config.adv);
        } catch (const FormatError& e) {
            throw FormatError(std::string("offline advertisement: ") + e.what());
        }
        result.source = TrustSource::offline_advertisement;
    } else {
        Client client(config.url, options.network);
        result.advertisement = client.fetch_advertisement(config.thp ? std::optional<std::string_view>(*config.thp)
                                                                     : std::nullopt);
        if (!config.thp) {
            if (!options.trust_on_first_use)
                throw TangError("untrusted advertisement from " + detail::excerpt(config.url) +
                                    ": pin a signing key with \"thp\" (or pass trust-on-first-use); it is signed by: " +
                                    join(result.advertisement.signing_thumbprints, ", "),
                                EPERM);
            result.source = TrustSource::trust_on_first_use;
            return result;
        }
        result.source = TrustSource::pinned_thumbprint;
    }
    // A pinned thumbprint must have signed the advertisement, offline or fetched (as clevis-encrypt-tang).
    if (config.thp && !result.advertisement.has_signing_key(*config.thp)) {
        // Clevis skips the trust check entirely with -y; so does an explicit trust-on-first-use here.
        if (options.trust_on_first_use) return result;
        throw TangError("thumbprint mismatch: trusted key '" + detail::excerpt(*config.thp, 64) + "' did not sign the advertisement of " +
                            detail::excerpt(config.url) + " (signing keys: " + join(result.advertisement.signing_thumbprints, ", ") +
                            ")",
                        EPERM);
    }
    return result;
}

}  // namespace tang
}  // namespace luksforge
