// Pbkdf: luksforge's key-derivation parameters, their names, and their translation to and from
// libcryptsetup's crypt_pbkdf_type.
#include "luks/volume_internal.hpp"

namespace luksforge {

namespace {

crypt_pbkdf_type to_crypt_pbkdf(const Pbkdf& pbkdf, const char* type_name) {
    crypt_pbkdf_type out{};
    out.type = type_name;
    out.hash = pbkdf.hash.empty() ? "sha256" : pbkdf.hash.c_str();
    const crypt_pbkdf_type* defaults = crypt_get_pbkdf_default(CRYPT_LUKS2);
    const bool argon = pbkdf.type != Pbkdf::Type::pbkdf2;
    out.time_ms = pbkdf.time_ms != 0 ? pbkdf.time_ms : (defaults ? defaults->time_ms : 2000);
    if (argon) {
        out.max_memory_kb = pbkdf.memory_kib != 0 ? pbkdf.memory_kib : (defaults ? defaults->max_memory_kb : 1048576);
        out.parallel_threads = pbkdf.parallel != 0 ? pbkdf.parallel : (defaults ? defaults->parallel_threads : 4);
    }
    if (pbkdf.iterations != 0) {
        // Explicit cost: no benchmark, so formats are reproducible and fast in tests.
        out.iterations = pbkdf.iterations;
        out.flags |= CRYPT_PBKDF_NO_BENCHMARK;
    }
    return out;
}

const char* crypt_type_name(Pbkdf::Type type) {
    switch (type) {
        case Pbkdf::Type::argon2id: return CRYPT_KDF_ARGON2ID;
        case Pbkdf::Type::argon2i: return CRYPT_KDF_ARGON2I;
        case Pbkdf::Type::pbkdf2: return CRYPT_KDF_PBKDF2;
    }
    return CRYPT_KDF_ARGON2ID;
}

}  // namespace

namespace detail {

Pbkdf from_crypt_pbkdf(const crypt_pbkdf_type& in) {
    Pbkdf out;
    out.type = Pbkdf::parse_type(in.type ? in.type : "argon2id");
    out.hash = in.hash ? in.hash : "";
    out.iterations = in.iterations;
    out.memory_kib = in.max_memory_kb;
    out.parallel = in.parallel_threads;
    out.time_ms = in.time_ms;
    return out;
}

void set_pbkdf(crypt_device* cd, const std::optional<Pbkdf>& pbkdf) {
    if (!pbkdf) {
        check_crypt(crypt_set_pbkdf_type(cd, nullptr), "cannot reset PBKDF");
        return;
    }
    const crypt_pbkdf_type type = to_crypt_pbkdf(*pbkdf, crypt_type_name(pbkdf->type));
    check_crypt(crypt_set_pbkdf_type(cd, &type), "invalid PBKDF parameters");
}

}  // namespace detail

std::string_view Pbkdf::type_name(Type t) noexcept {
    switch (t) {
        case Type::argon2id: return "argon2id";
        case Type::argon2i: return "argon2i";
        case Type::pbkdf2: return "pbkdf2";
    }
    return "argon2id";
}

Pbkdf::Type Pbkdf::parse_type(std::string_view name) {
    if (name == "argon2id") return Type::argon2id;
    if (name == "argon2i") return Type::argon2i;
    if (name == "pbkdf2") return Type::pbkdf2;
    throw FormatError("unknown PBKDF \"" + std::string(name) + "\" (expected argon2id, argon2i or pbkdf2)");
}

}  // namespace luksforge
