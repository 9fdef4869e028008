// Clevis's sss pin: Shamir t-of-n over GF(p) with a fresh 256-bit safe prime per encryption. The content key is
// the polynomial's constant coefficient; each child pin (tang, or sss again) encrypts one share x‖y. The outer
// JWE is "dir" + A256GCM with the children's compact JWEs in the protected header, exactly as
// clevis-encrypt-sss writes it, so stock `clevis decrypt` reads ours and we read theirs.
#include "pins/sss.hpp"

#include "util/error_util.hpp"
#include "util/json_util.hpp"
#include "pins/pins.hpp"

#include <luksforge/error.hpp>

// libjose's headers carry no extern "C" guards.
extern "C" {
#include <jose/b64.h>
}
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace luksforge::detail {

namespace {

constexpr std::size_t prime_bytes = 32;  // Clevis: sss_generate(32, t)
constexpr std::size_t gcm_iv_bytes = 12;
constexpr std::size_t gcm_tag_bytes = 16;
// Far beyond any real policy (a 4 MiB LUKS2 header holds ~2000 tang children at most).
constexpr std::size_t max_children = 256;

// ---- OpenSSL handles ---------------------------------------------------------------------------------------

[[noreturn]] void throw_openssl(const std::string& what) {
    const unsigned long code = ERR_get_error();
    char text[256] = "unknown OpenSSL error";
    if (code != 0) ERR_error_string_n(code, text, sizeof text);
    ERR_clear_error();
    throw Error(EIO, "sss: " + what + ": " + text);
}

struct BnDeleter {
    // Shares and coefficients are secret: always wipe.
    void operator()(BIGNUM* bn) const noexcept { BN_clear_free(bn); }
};
using Bn = std::unique_ptr<BIGNUM, BnDeleter>;

struct BnCtxDeleter {
    void operator()(BN_CTX* ctx) const noexcept { BN_CTX_free(ctx); }
};
using BnCtx = std::unique_ptr<BN_CTX, BnCtxDeleter>;

struct MontDeleter {
    void operator()(BN_MONT_CTX* mont) const noexcept { BN_MONT_CTX_free(mont); }
};
using Mont = std::unique_ptr<BN_MONT_CTX, MontDeleter>;

struct CipherCtxDeleter {
    void operator()(EVP_CIPHER_CTX* ctx) const noexcept { EVP_CIPHER_CTX_free(ctx); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

// A new BIGNUM flagged for OpenSSL's constant-time code paths (everything here but p is secret).
Bn bn_new() {
    Bn bn(BN_new());
    if (!bn) throw_openssl("BN_new");
    BN_set_flags(bn.get(), BN_FLG_CONSTTIME);
    return bn;
}

BnCtx bn_ctx_new() {
    BnCtx ctx(BN_CTX_secure_new());
    if (!ctx) throw_openssl("BN_CTX_new");
    return ctx;
}

Bn bn_from_bytes(std::span<const std::uint8_t> bytes) {
    Bn bn = bn_new();
    if (BN_bin2bn(bytes.data(), static_cast<int>(bytes.size()), bn.get()) == nullptr) throw_openssl("BN_bin2bn");
    return bn;
}

// Big-endian, left-padded to `out.size()` bytes (as Clevis's bn_encode).
void bn_to_bytes(const BIGNUM* bn, std::span<std::uint8_t> out) {
    if (BN_bn2binpad(bn, out.data(), static_cast<int>(out.size())) < 0) throw_openssl("BN_bn2binpad");
}

// Uniform in [low, p): low is 0 or 1.
void bn_random_below(BIGNUM* out, const BIGNUM* p, unsigned low, BN_CTX* ctx) {
    do {
        if (BN_priv_rand_range_ex(out, p, 0, ctx) != 1) throw_openssl("BN_priv_rand_range_ex");
    } while (low == 1 && BN_is_zero(out));
}

struct Field {
    Bn p = bn_new();
    BnCtx ctx = bn_ctx_new();
    Mont mont{BN_MONT_CTX_new()};
    Bn p_minus_2 = bn_new();

    explicit Field(std::span<const std::uint8_t> prime) {
        p = bn_from_bytes(prime);
        BN_set_flags(p.get(), BN_FLG_CONSTTIME);
        if (!mont) throw_openssl("BN_MONT_CTX_new");
        if (!BN_is_odd(p.get()) || BN_num_bits(p.get()) < 16)
            throw FormatError("sss: the prime p is not an odd prime of a usable size");
        if (BN_MONT_CTX_set(mont.get(), p.get(), ctx.get()) != 1) throw_openssl("BN_MONT_CTX_set");
        if (BN_copy(p_minus_2.get(), p.get()) == nullptr || BN_sub_word(p_minus_2.get(), 2) != 1)
            throw_openssl("BN_sub_word");
    }

    // Montgomery form keeps multiplication free of data-dependent reductions.
    void to_mont(BIGNUM* a) { if (BN_to_montgomery(a, a, mont.get(), ctx.get()) != 1) throw_openssl("BN_to_montgomery"); }
    void from_mont(BIGNUM* a) { if (BN_from_montgomery(a, a, mont.get(), ctx.get()) != 1) throw_openssl("BN_from_montgomery"); }
    void mul(BIGNUM* r, const BIGNUM* a, const BIGNUM* b) {
        if (BN_mod_mul_montgomery(r, a, b, mont.get(), ctx.get()) != 1) throw_openssl("BN_mod_mul_montgomery");
    }
    void add(BIGNUM* r, const BIGNUM* a, const BIGNUM* b) {
        if (BN_mod_add_quick(r, a, b, p.get()) != 1) throw_openssl("BN_mod_add_quick");
    }
    void sub(BIGNUM* r, const BIGNUM* a, const BIGNUM* b) {
        if (BN_mod_sub_quick(r, a, b, p.get()) != 1) throw_openssl("BN_mod_sub_quick");
    }
    // a^(p-2) = a^-1 in GF(p), by constant-time exponentiation (normal form in and out).
    void invert(BIGNUM* r, const BIGNUM* a) {
        if (BN_mod_exp_mont_consttime(r, a, p_minus_2.get(), p.get(), ctx.get(), mont.get()) != 1)
            throw_openssl("BN_mod_exp_mont_consttime");
    }
};

// ---- base64url and compact JWE -----------------------------------------------------------------------------

std::string b64u_encode(std::span<const std::uint8_t> bytes) {
    const std::size_t length = jose_b64_enc_buf(bytes.data(), bytes.size(), nullptr, 0);
    if (length == SIZE_MAX) throw FormatError("sss: base64url encoding failed");
    std::string out(length, '\0');
    if (jose_b64_enc_buf(bytes.data(), bytes.size(), out.data(), out.size()) != length)
        throw FormatError("sss: base64url encoding failed");
    return out;
}

std::vector<std::uint8_t> b64u_decode(std::string_view text, std::string_view what) {
    const std::size_t length = jose_b64_dec_buf(text.data(), text.size(), nullptr, 0);
    if (length == SIZE_MAX) throw FormatError("sss: " + std::string(what) + " is not valid base64url");
    std::vector<std::uint8_t> out(length);
    if (jose_b64_dec_buf(text.data(), text.size(), out.data(), out.size()) != length)
        throw FormatError("sss: " + std::string(what) + " is not valid base64url");
    return out;
}

struct CompactJwe {
    std::string_view protected_b64, encrypted_key, iv, ciphertext, tag;
};

CompactJwe split_compact(std::string_view jwe) {
    std::vector<std::string_view> parts;
    std::size_t start = 0;
    for (;;) {
        const std::size_t dot = jwe.find('.', start);
        parts.push_back(jwe.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
        if (dot == std::string_view::npos) break;
        start = dot + 1;
    }
    if (parts.size() != 5)
        throw FormatError("sss: a compact JWE has 5 dot-separated parts, this one has " + std::to_string(parts.size()));
    return {parts[0], parts[1], parts[2], parts[3], parts[4]};
}

// "tang http://host:port" / "sss 2 of 3" for error messages; never throws.
std::string describe_child(std::string_view jwe) noexcept {
    try {
        const std::string_view head = jwe.substr(0, jwe.find('.'));
        const std::vector<std::uint8_t> bytes = b64u_decode(head, "child header");
        JsonPtr header = json_parse({reinterpret_cast<const char*>(bytes.data()), bytes.size()}, "child header");
        const json_t* clevis = json_object_get(header.get(), "clevis");
        const std::string pin = json_string_or(clevis, "pin", "?");
        if (pin == "tang") return "tang " + json_string_or(json_object_get(clevis, "tang"), "url", "?");
        if (pin == "sss") {
            const json_t* sss = json_object_get(clevis, "sss");
            return "sss " + std::to_string(json_integer_value(json_object_get(sss, "t"))) + " of " +
                   std::to_string(json_array_size(json_object_get(sss, "jwe")));
        }
        return pin;
    } catch (...) {
        return "unreadable JWE";
    }
}

// ---- AES-256-GCM (JWE "dir" + "A256GCM": AAD is the ASCII of the base64url protected header) ----------------

struct Sealed {
    std::vector<std::uint8_t> iv, ciphertext, tag;
};

Sealed gcm_seal(const SecretBuffer& key, std::string_view aad, std::span<const std::uint8_t> plaintext) {
    Sealed out;
    out.iv.resize(gcm_iv_bytes);
    random_bytes(out.iv);
    out.ciphertext.resize(plaintext.size());
    out.tag.resize(gcm_tag_bytes);
    CipherCtx ctx(EVP_CIPHER_CTX_new());
    int length = 0;
    if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, gcm_iv_bytes, nullptr) != 1 ||
        EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), out.iv.data()) != 1 ||
        EVP_EncryptUpdate(ctx.get(), nullptr, &length, reinterpret_cast<const unsigned char*>(aad.data()),
                          static_cast<int>(aad.size())) != 1 ||
        EVP_EncryptUpdate(ctx.get(), out.ciphertext.data(), &length, plaintext.data(),
                          static_cast<int>(plaintext.size())) != 1 ||
        EVP_EncryptFinal_ex(ctx.get(), out.ciphertext.data() + length, &length) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, gcm_tag_bytes, out.tag.data()) != 1)
        throw_openssl("AES-256-GCM encryption");
    return out;
}

SecretBuffer gcm_open(const SecretBuffer& key, std::string_view aad, std::span<const std::uint8_t> iv,
                      std::span<const std::uint8_t> ciphertext, std::span<const std::uint8_t> tag) {
    if (iv.size() != gcm_iv_bytes || tag.size() != gcm_tag_bytes)
        throw FormatError("sss: the JWE's iv or tag has the wrong length for A256GCM");
    SecretBuffer plaintext(ciphertext.size());
    CipherCtx ctx(EVP_CIPHER_CTX_new());
    int length = 0;
    if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, gcm_iv_bytes, nullptr) != 1 ||
        EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), iv.data()) != 1 ||
        EVP_DecryptUpdate(ctx.get(), nullptr, &length, reinterpret_cast<const unsigned char*>(aad.data()),
                          static_cast<int>(aad.size())) != 1 ||
        EVP_DecryptUpdate(ctx.get(), plaintext.data(), &length, ciphertext.data(),
                          static_cast<int>(ciphertext.size())) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, gcm_tag_bytes,
                            const_cast<std::uint8_t*>(tag.data())) != 1)
        throw_openssl("AES-256-GCM decryption");
    if (EVP_DecryptFinal_ex(ctx.get(), plaintext.data() + length, &length) != 1) {
        ERR_clear_error();
        throw AuthError("sss: the JWE does not authenticate with the key recombined from its shares "
                        "(the JWE or a share was tampered with)");
    }
    return plaintext;
}

// ---- concurrent child decryption ---------------------------------------------------------------------------

// Ordered by how much a failure says about the JWE: the most telling one decides the exception type.
enum class Failure { none, other, tpm, format, tang, auth };

struct ChildResult {
    bool done = false;
    bool ok = false;
    bool abandoned = false;  // still running when the outcome was already decided
    Failure failure = Failure::none;
    std::string error;
    SecretBuffer share;
};

struct DecryptState {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<ChildResult> results;
    std::size_t succeeded = 0;
    std::size_t failed = 0;
};

// Joins every child thread on every exit path, after telling the stragglers to stop.
struct ThreadJoiner {
    std::vector<std::thread> threads;
    std::shared_ptr<std::atomic<bool>> cancel;
    ~ThreadJoiner() noexcept {
        cancel->store(true);
        for (auto& thread : threads)
            if (thread.joinable()) thread.join();
    }
};

void run_child(const std::shared_ptr<DecryptState>& state, std::size_t index, const std::string& jwe,
               const PinOptions& options) noexcept {
    ChildResult result;
    try {
        result.share = clevis_decrypt(jwe, options);
        result.ok = true;
    } catch (const AuthError& e) {
        result.failure = Failure::auth, result.error = bare_message(e);
    } catch (const TangError& e) {
        result.failure = Failure::tang, result.error = bare_message(e);
    } catch (const TpmError& e) {
        result.failure = Failure::tpm, result.error = bare_message(e);
    } catch (const FormatError& e) {
        result.failure = Failure::format, result.error = bare_message(e);
    } catch (const std::exception& e) {
        result.failure = Failure::other, result.error = bare_message(e);
    } catch (...) {
        result.failure = Failure::other, result.error = "unknown error";
    }
    try {
        std::lock_guard lock(state->mutex);
        ChildResult& slot = state->results[index];
        const bool abandoned = slot.abandoned;
        slot = std::move(result);
        slot.done = true;
        slot.abandoned = abandoned;
        ++(slot.ok ? state->succeeded : state->failed);
    } catch (...) {
        // lock_guard cannot fail in practice; nothing sensible to do from a worker thread.
    }
    state->changed.notify_all();
}

}  // namespace

// ---- Shamir arithmetic -------------------------------------------------------------------------------------

std::vector<std::uint8_t> shamir_generate_prime(std::size_t bytes) {
    if (bytes < 2 || bytes > 512) throw FormatError("sss: prime size out of range");
    BnCtx ctx = bn_ctx_new();
    Bn p = bn_new();
    // safe = 1: p = 2q + 1 with q prime, as Clevis's BN_generate_prime_ex(p, 256, 1, ...).
    if (BN_generate_prime_ex2(p.get(), static_cast<int>(bytes * 8), 1, nullptr, nullptr, nullptr, ctx.get()) != 1)
        throw_openssl("BN_generate_prime_ex2");
    std::vector<std::uint8_t> out(bytes);
    bn_to_bytes(p.get(), out);
    return out;
}

ShamirSplit shamir_split(std::span<const std::uint8_t> prime, std::size_t threshold, std::size_t count) {
    if (threshold < 1 || threshold > count)
        throw FormatError("sss: invalid threshold (required: 1 <= " + std::to_string(threshold) +
                          " <= " + std::to_string(count) + ")");
    Field field(prime);
    const std::size_t width = prime.size();

    // Coefficients e[0..t-1]; e[0] is the secret. A non-zero top coefficient keeps the degree exactly t-1, so
    // no t-1 shares determine the secret.
    std::vector<Bn> coefficients;
    for (std::size_t i = 0; i < threshold; ++i) {
        Bn c = bn_new();
        bn_random_below(c.get(), field.p.get(), (i + 1 == threshold && threshold > 1) ? 1 : 0, field.ctx.get());
        coefficients.push_back(std::move(c));
    }

    ShamirSplit out;
    out.secret = SecretBuffer(width);
    bn_to_bytes(coefficients[0].get(), {out.secret.data(), width});
    for (auto& c : coefficients) field.to_mont(c.get());

    std::vector<Bn> xs;
    Bn y = bn_new();
    Bn x_mont = bn_new();
    for (std::size_t n = 0; n < count; ++n) {
        Bn x = bn_new();
        // Distinct non-zero x: a repeated x would make the shares unusable together.
        for (bool unique = false; !unique;) {
            bn_random_below(x.get(), field.p.get(), 1, field.ctx.get());
            unique = std::none_of(xs.begin(), xs.end(), [&](const Bn& other) { return BN_cmp(other.get(), x.get()) == 0; });
        }
        if (BN_copy(x_mont.get(), x.get()) == nullptr) throw_openssl("BN_copy");
        field.to_mont(x_mont.get());
        // Horner: y = (...(e[t-1]·x + e[t-2])·x + ...)·x + e[0]
        if (BN_copy(y.get(), coefficients[threshold - 1].get()) == nullptr) throw_openssl("BN_copy");
        for (std::size_t i = threshold - 1; i-- > 0;) {
            field.mul(y.get(), y.get(), x_mont.get());
            field.add(y.get(), y.get(), coefficients[i].get());
        }
        field.from_mont(y.get());

        SecretBuffer share(2 * width);
        bn_to_bytes(x.get(), {share.data(), width});
        bn_to_bytes(y.get(), {share.data() + width, width});
        out.shares.push_back(std::move(share));
        xs.push_back(std::move(x));
    }
    return out;
}

SecretBuffer shamir_combine(std::span<const std::uint8_t> prime, const std::vector<std::span<const std::uint8_t>>& shares) {
    Field field(prime);
    const std::size_t width = prime.size();
    if (shares.empty()) throw FormatError("sss: no shares to combine");

    std::vector<Bn> xs, ys;
    for (std::size_t i = 0; i < shares.size(); ++i) {
        if (shares[i].size() != 2 * width)
            throw FormatError("sss: share " + std::to_string(i) + " has " + std::to_string(shares[i].size()) +
                              " bytes, expected " + std::to_string(2 * width));
        Bn x = bn_from_bytes(shares[i].first(width));
        Bn y = bn_from_bytes(shares[i].subspan(width));
        if (BN_cmp(x.get(), field.p.get()) >= 0 || BN_cmp(y.get(), field.p.get()) >= 0)
            throw FormatError("sss: share " + std::to_string(i) + " is not a point modulo p");
        for (std::size_t j = 0; j < xs.size(); ++j)
            if (BN_cmp(xs[j].get(), x.get()) == 0)
                throw FormatError("sss: shares " + std::to_string(j) + " and " + std::to_string(i) + " have the same x");
        xs.push_back(std::move(x));
        ys.push_back(std::move(y));
    }
    for (auto& x : xs) field.to_mont(x.get());
    for (auto& y : ys) field.to_mont(y.get());

    // secret = Σ_i y_i · Π_{j≠i} x_j / (x_j − x_i)   (Lagrange basis evaluated at 0)
    Bn secret = bn_new();
    BN_zero(secret.get());
    Bn numerator = bn_new(), denominator = bn_new(), difference = bn_new(), term = bn_new();
    for (std::size_t i = 0; i < xs.size(); ++i) {
        BN_one(numerator.get());
        BN_one(denominator.get());
        field.to_mont(numerator.get());
        field.to_mont(denominator.get());
        for (std::size_t j = 0; j < xs.size(); ++j) {
            if (j == i) continue;
            field.mul(numerator.get(), numerator.get(), xs[j].get());
            field.sub(difference.get(), xs[j].get(), xs[i].get());
            field.mul(denominator.get(), denominator.get(), difference.get());
        }
        field.from_mont(denominator.get());
        field.invert(term.get(), denominator.get());
        field.to_mont(term.get());
        field.mul(term.get(), term.get(), numerator.get());
        field.mul(term.get(), term.get(), ys[i].get());
        field.add(secret.get(), secret.get(), term.get());
    }
    field.from_mont(secret.get());
    SecretBuffer out(width);
    bn_to_bytes(secret.get(), {out.data(), width});
    return out;
}

// ---- the pin -----------------------------------------------------------------------------------------------

std::string sss_encrypt(const json_t* config, std::span<const std::uint8_t> secret, const PinOptions& options) {
    if (!json_is_object(config)) throw FormatError("sss: the configuration must be a JSON object");
    // Clevis: "t" is optional (default 1), "pins" is required; each pin maps to one config or an array of them.
    json_int_t threshold = 1;
    if (const json_t* t = json_object_get(config, "t")) {
        if (!json_is_integer(t)) throw FormatError("sss: \"t\" must be an integer");
        threshold = json_integer_value(t);
    }
    const json_t* pins = json_object_get(config, "pins");
    if (!json_is_object(pins)) throw FormatError("sss: config missing 'pins' object");

    std::vector<std::pair<std::string, std::string>> children;  // pin name, its config JSON
    const char* name = nullptr;
    json_t* value = nullptr;
    json_object_foreach(const_cast<json_t*>(pins), name, value) {
        auto add = [&](const json_t* child) {
            if (!json_is_object(child))
                throw FormatError(std::string("sss: each \"") + name + "\" configuration must be a JSON object");
            children.emplace_back(name, json_dump(child, JSON_COMPACT | JSON_SORT_KEYS));
        };
        if (json_is_object(value)) {
            add(value);
        } else if (json_is_array(value)) {
            std::size_t i = 0;
            json_t* child = nullptr;
            json_array_foreach(value, i, child) add(child);
        } else {
            throw FormatError(std::string("sss: pin \"") + name + "\" must map to an object or an array of objects");
        }
    }
    if (threshold < 1 || static_cast<std::size_t>(threshold) > children.size())
        throw FormatError("sss: invalid threshold (required: 1 <= " + std::to_string(threshold) +
                          " <= " + std::to_string(children.size()) + ")");

    const std::vector<std::uint8_t> prime = shamir_generate_prime(prime_bytes);
    ShamirSplit split = shamir_split(prime, static_cast<std::size_t>(threshold), children.size());

    JsonPtr jwes = json_take(json_array());
    for (std::size_t i = 0; i < children.size(); ++i) {
        std::string child;
        try {
            child = clevis_encrypt(children[i].first, children[i].second, split.shares[i].bytes(), options);
        } catch (const Error& e) {
            // Keep the child's exception type; say which child it was.
            const std::string where = "sss: child " + std::to_string(i) + " (" + children[i].first + "): ";
            const std::string message = where + bare_message(e);
            if (dynamic_cast<const TangError*>(&e)) throw TangError(message, e.code().value());
            if (dynamic_cast<const FormatError*>(&e)) throw FormatError(message, e.code().value());
            if (dynamic_cast<const AuthError*>(&e)) throw AuthError(message, e.code().value());
            if (dynamic_cast<const TpmError*>(&e)) throw TpmError(message, e.code().value());
            throw Error(e.code().value(), message);
        }
        json_array_append_new(jwes.get(), json_stringn(child.data(), child.size()));
    }

    const std::string prime_b64 = b64u_encode(prime);
    JsonPtr header = json_take(json_pack("{s:s,s:s,s:{s:s,s:{s:I,s:s,s:O}}}", "alg", "dir", "enc", "A256GCM",
                                         "clevis", "pin", "sss", "sss", "t", threshold, "p", prime_b64.c_str(),
                                         "jwe", jwes.get()));
    if (!header) throw FormatError("sss: cannot build the JWE header");

    const std::string header_text = json_dump(header.get(), JSON_COMPACT | JSON_PRESERVE_ORDER);
    const std::string protected_b64 =
        b64u_encode({reinterpret_cast<const std::uint8_t*>(header_text.data()), header_text.size()});
    const Sealed sealed = gcm_seal(split.secret, protected_b64, secret);
    return protected_b64 + ".." + b64u_encode(sealed.iv) + "." + b64u_encode(sealed.ciphertext) + "." +
           b64u_encode(sealed.tag);
}

SssJwe parse_sss_jwe(std::string_view jwe, const json_t* protected_header) {
    const CompactJwe parts = split_compact(jwe);
    if (json_string_or(protected_header, "alg") != "dir")
        throw FormatError("sss: the JWE's \"alg\" must be \"dir\"");
    if (json_string_or(protected_header, "enc", "A256GCM") != "A256GCM")
        throw FormatError("sss: the JWE's \"enc\" must be \"A256GCM\"");
    if (!parts.encrypted_key.empty()) throw FormatError("sss: a \"dir\" JWE has an empty encrypted key");

    const json_t* sss = json_object_get(json_object_get(protected_header, "clevis"), "sss");
    const json_t* t = json_object_get(sss, "t");
    const json_t* p = json_object_get(sss, "p");
    const json_t* children = json_object_get(sss, "jwe");
    if (!json_is_integer(t) || !json_is_string(p) || !json_is_array(children))
        throw FormatError("sss: the JWE header lacks clevis.sss.t, .p or .jwe");
    const json_int_t threshold = json_integer_value(t);
    const std::size_t count = json_array_size(children);
    if (threshold < 1 || static_cast<std::size_t>(threshold) > count)
        throw FormatError("sss: the JWE's threshold " + std::to_string(threshold) + " does not fit its " +
                          std::to_string(count) + " shares");
    // One thread per child: a header from a hostile token must not fan out into thousands of them.
    if (count > max_children)
        throw FormatError("sss: the JWE has " + std::to_string(count) + " shares, more than the " +
                          std::to_string(max_children) + " luksforge accepts");
    SssJwe parsed;
    parsed.threshold = static_cast<std::size_t>(threshold);
    parsed.prime = b64u_decode(json_string_value(p), "p");
    // The recombined secret is the content key: Clevis's 32-byte prime makes it an A256GCM key.
    if (parsed.prime.size() != prime_bytes)
        throw FormatError("sss: p has " + std::to_string(parsed.prime.size()) + " bytes, expected " +
                          std::to_string(prime_bytes));
    for (std::size_t i = 0; i < count; ++i) {
        const json_t* child = json_array_get(children, i);
        if (!json_is_string(child)) throw FormatError("sss: share " + std::to_string(i) + " is not a compact JWE string");
        parsed.child_jwes.emplace_back(json_string_value(child), json_string_length(child));
    }
    return parsed;
}

SecretBuffer sss_decrypt(std::string_view jwe, const json_t* protected_header, const PinOptions& options) {
    const CompactJwe parts = split_compact(jwe);
    const SssJwe parsed = parse_sss_jwe(jwe, protected_header);
    const std::vector<std::uint8_t>& prime = parsed.prime;
    const std::vector<std::string>& child_jwes = parsed.child_jwes;
    const std::size_t count = child_jwes.size();

    // Every child runs at once; the first `threshold` successes win and the rest are cancelled (their
    // transfers abort through NetworkOptions::cancel). A caller's own cancel flag is honoured too.
    auto state = std::make_shared<DecryptState>();
    state->results.resize(count);
    const auto parent_cancel = options.network.cancel;
    ThreadJoiner joiner{{}, std::make_shared<std::atomic<bool>>(false)};
    PinOptions child_options = options;
    child_options.network.cancel = joiner.cancel;
    joiner.threads.reserve(count);
    for (std::size_t i = 0; i < count; ++i)
        joiner.threads.emplace_back([state, i, child = child_jwes[i], child_options] {
            run_child(state, i, child, child_options);
        });

    const std::size_t needed = parsed.threshold;
    bool parent_cancelled = false;
    {
        std::unique_lock lock(state->mutex);
        for (;;) {
            if (state->succeeded >= needed || state->failed > count - needed) break;
            if (parent_cancel && parent_cancel->load()) {
                parent_cancelled = true;
                break;
            }
            state->changed.wait_for(lock, std::chrono::milliseconds(50));
        }
        for (auto& result : state->results)
            if (!result.done) result.abandoned = true;
    }
    joiner.cancel->store(true);
    for (auto& thread : joiner.threads) thread.join();

    if (parent_cancelled) throw TangError("sss: cancelled", ECANCELED);

    std::vector<std::span<const std::uint8_t>> shares;
    for (const auto& result : state->results)
        if (result.ok && shares.size() < needed) shares.push_back(result.share.bytes());

    if (shares.size() < needed) {
        std::string message = "sss: " + std::to_string(shares.size()) + " of the " + std::to_string(needed) +
                              " shares needed could be recovered from " + std::to_string(count) + " children";
        Failure worst = Failure::none;
        for (std::size_t i = 0; i < count; ++i) {
            const ChildResult& result = state->results[i];
            if (result.ok) continue;
            message += "; child " + std::to_string(i) + " (" + describe_child(child_jwes[i]) + "): ";
            if (result.abandoned) {
                message += "abandoned (not at fault): the threshold could no longer be reached";
                continue;
            }
            message += result.error;
            // An integrity failure outranks a network one: retrying will not fix a tampered share.
            worst = std::max(worst, result.failure);
        }
        switch (worst) {
            case Failure::auth: throw AuthError(message);
            case Failure::format: throw FormatError(message);
            case Failure::tpm: throw TpmError(message, EIO);
            case Failure::other: throw Error(EIO, message);
            default: throw TangError(message);
        }
    }

    const SecretBuffer key = shamir_combine(prime, shares);
    return gcm_open(key, parts.protected_b64, b64u_decode(parts.iv, "iv"), b64u_decode(parts.ciphertext, "ciphertext"),
                    b64u_decode(parts.tag, "tag"));
}

std::string dir_a256gcm_encrypt(const SecretBuffer& key, const json_t* header, std::span<const std::uint8_t> plaintext) {
    if (key.size() != 32) throw FormatError("A256GCM needs a 32-byte key");
    const std::string header_text = json_dump(header, JSON_COMPACT | JSON_PRESERVE_ORDER);
    const std::string protected_b64 =
        b64u_encode({reinterpret_cast<const std::uint8_t*>(header_text.data()), header_text.size()});
    const Sealed sealed = gcm_seal(key, protected_b64, plaintext);
    return protected_b64 + ".." + b64u_encode(sealed.iv) + "." + b64u_encode(sealed.ciphertext) + "." +
           b64u_encode(sealed.tag);
}

SecretBuffer dir_a256gcm_decrypt(const SecretBuffer& key, std::string_view jwe) {
    if (key.size() != 32) throw FormatError("A256GCM needs a 32-byte key, this one has " + std::to_string(key.size()));
    const CompactJwe parts = split_compact(jwe);
    return gcm_open(key, parts.protected_b64, b64u_decode(parts.iv, "iv"), b64u_decode(parts.ciphertext, "ciphertext"),
                    b64u_decode(parts.tag, "tag"));
}

}  // namespace luksforge::detail
