// EC public-key checks with OpenSSL (ec_point.hpp).
#include "tang/ec_point.hpp"

#include "util/json_util.hpp"

#include <luksforge/error.hpp>
#include <luksforge/secret.hpp>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/obj_mac.h>

#include <memory>

namespace luksforge::detail {
namespace {

struct GroupDeleter {
    void operator()(EC_GROUP* g) const noexcept { EC_GROUP_free(g); }
};
struct PointDeleter {
    void operator()(EC_POINT* p) const noexcept { EC_POINT_free(p); }
};
struct BnDeleter {
    void operator()(BIGNUM* b) const noexcept { BN_free(b); }
};

struct Curve {
    int nid;
    std::size_t bytes;
};

std::optional<Curve> curve_of(const std::string& crv) {
    if (crv == "P-256") return Curve{NID_X9_62_prime256v1, 32};
    if (crv == "P-384") return Curve{NID_secp384r1, 48};
    if (crv == "P-521") return Curve{NID_secp521r1, 66};
    return std::nullopt;
}

}  // namespace

std::optional<std::string> ec_public_key_problem(const json_t* jwk) {
    if (!json_is_object(jwk)) return "it is not a JSON object";
    const std::string kty = json_string_or(jwk, "kty");
    if (kty != "EC") return "its kty is '" + kty.substr(0, 16) + "', not EC";
    const std::string crv = json_string_or(jwk, "crv");
    const std::optional<Curve> curve = curve_of(crv);
    if (!curve) return "its curve '" + crv.substr(0, 16) + "' is not P-256, P-384 or P-521";
    std::unique_ptr<BIGNUM, BnDeleter> coordinate[2];
    const char* names[2] = {"x", "y"};
    for (int i = 0; i < 2; ++i) {
        const json_t* value = json_object_get(jwk, names[i]);
        if (!json_is_string(value)) return std::string("it has no \"") + names[i] + "\" coordinate";
        SecretBuffer raw;
        try {
            raw = base64url_decode(std::string_view(json_string_value(value), json_string_length(value)));
        } catch (const Error&) {
            return std::string("its \"") + names[i] + "\" coordinate is not base64url";
        }
        if (raw.size() != curve->bytes)
            return std::string("its \"") + names[i] + "\" coordinate has " + std::to_string(raw.size()) +
                   " bytes, " + crv + " needs " + std::to_string(curve->bytes);
        coordinate[i].reset(BN_bin2bn(raw.bytes().data(), static_cast<int>(raw.size()), nullptr));
        if (!coordinate[i]) throw Error(ENOMEM, "cannot read an EC coordinate");
    }
    std::unique_ptr<EC_GROUP, GroupDeleter> group(EC_GROUP_new_by_curve_name(curve->nid));
    if (!group) throw Error(EIO, "OpenSSL does not know " + crv);
    std::unique_ptr<EC_POINT, PointDeleter> point(EC_POINT_new(group.get()));
    if (!point) throw Error(ENOMEM, "cannot allocate an EC point");
    if (EC_POINT_set_affine_coordinates(group.get(), point.get(), coordinate[0].get(), coordinate[1].get(), nullptr) !=
            1 ||
        EC_POINT_is_on_curve(group.get(), point.get(), nullptr) != 1)
        return "the point (x, y) is not on " + crv;
    return std::nullopt;
}

}  // namespace luksforge::detail
