// Clevis LUKS2 bindings (clevis.hpp) as Volume methods: bind, unlock, unbind, bindings, regen, activate.
#include "bindings.hpp"

#include <luksforge/clevis.hpp>

#include <pybind11/stl.h>

namespace luksforge::python {
namespace {

using namespace pybind11::literals;

std::string verification_name(clevis::Verification v) {
    switch (v) {
        case clevis::Verification::verified: return "verified";
        case clevis::Verification::skipped: return "skipped";
    }
    return "unknown";
}

clevis::BindOptions bind_options(int keyslot, const std::optional<Pbkdf>& pbkdf, bool verify,
                                 bool trust_on_first_use, const NetworkOptions* network) {
    clevis::BindOptions options;
    options.pin = pin_options(trust_on_first_use, network);
    options.keyslot = keyslot;
    if (pbkdf) options.pbkdf = *pbkdf;
    options.verify = verify;
    return options;
}

// What unlock() returns to Python: the recovered passphrase as a wiping Secret.
struct PyUnlocked {
    int token = -1;
    int keyslot = -1;
    py::object passphrase;
};

}  // namespace

void register_clevis(py::module_& m) {
    py::class_<clevis::BindResult>(m, "BindResult", "The keyslot and token of a new Clevis binding and its check.")
        .def_readonly("keyslot", &clevis::BindResult::keyslot)
        .def_readonly("token", &clevis::BindResult::token)
        .def_property_readonly("verification", [](const clevis::BindResult& r) {
            return verification_name(r.verification);
        }, "'verified', or 'skipped' (verify=False: NOT verified).")
        .def_property_readonly("verified", [](const clevis::BindResult& r) {
            return r.verification == clevis::Verification::verified;
        })
        .def_readonly("message", &clevis::BindResult::message)
        .def("__repr__", [](const clevis::BindResult& r) {
            return "BindResult(keyslot=" + std::to_string(r.keyslot) + ", token=" + std::to_string(r.token) +
                   ", verification='" + verification_name(r.verification) + "')";
        });

    py::class_<PyUnlocked>(m, "Unlocked", "A clevis token that opened its keyslot, and the recovered passphrase.")
        .def_readonly("token", &PyUnlocked::token)
        .def_readonly("keyslot", &PyUnlocked::keyslot)
        .def_readonly("passphrase", &PyUnlocked::passphrase, "The keyslot passphrase (a luksforge.Secret).")
        .def("__repr__", [](const PyUnlocked& u) {
            return "Unlocked(token=" + std::to_string(u.token) + ", keyslot=" + std::to_string(u.keyslot) + ")";
        });

    py::class_<clevis::Binding>(m, "Binding", "One clevis token, as `clevis luks list` shows it.")
        .def_readonly("token", &clevis::Binding::token)
        .def_readonly("keyslot", &clevis::Binding::keyslot)
        .def_readonly("pin", &clevis::Binding::pin)
        .def_readonly("config", &clevis::Binding::config)
        .def_readonly("jwe", &clevis::Binding::jwe)
        .def_readonly("problem", &clevis::Binding::problem, "Why the token cannot be read ('' when it can).")
        .def_readonly("pins", &clevis::Binding::pins, "Every pin used, nested ones included, sorted.")
        .def_property_readonly("config_data", [](const clevis::Binding& b) {
            return b.config.empty() ? py::object(py::none()) : json_loads(b.config);
        })
        .def("__str__", &clevis::format_binding)
        .def("__repr__", [](const clevis::Binding& b) {
            return "Binding(keyslot=" + std::to_string(b.keyslot) + ", pin='" + b.pin + "')";
        });

    py::class_<clevis::RegenResult>(m, "RegenResult", "The keyslot a regen regenerated in place and the new binding.")
        .def_readonly("old_keyslot", &clevis::RegenResult::old_keyslot)
        .def_readonly("bound", &clevis::RegenResult::bound)
        .def_readonly("resumed", &clevis::RegenResult::resumed)
        .def_readonly("used_existing_passphrase", &clevis::RegenResult::used_existing_passphrase)
        .def("__repr__", [](const clevis::RegenResult& r) {
            return "RegenResult(old_keyslot=" + std::to_string(r.old_keyslot) + ", keyslot=" +
                   std::to_string(r.bound.keyslot) + ")";
        });

    m.def("describe_jwe", &clevis::describe_jwe, "jwe"_a,
          "(pin, config) that Clevis shows for a compact JWE, e.g. ('tang', '{\"url\":...}').");
    m.def("token_json", &clevis::token_json, "keyslot"_a, "jwe"_a,
          "The LUKS2 clevis token JSON for a compact JWE, in Clevis's exact layout.");
    m.def("token_to_compact", [](py::handle token) { return clevis::token_to_compact(json_text(token, "token")); },
          "token"_a, "The compact JWE inside a clevis token (JSON text or dict).");

    auto volume = py::reinterpret_borrow<py::class_<PyVolume>>(m.attr("Volume"));
    volume
        .def("bind", [](PyVolume& v, const std::string& pin, py::handle config, py::handle passphrase,
                        py::handle volume_key, int keyslot, const std::optional<Pbkdf>& pbkdf, bool verify,
                        bool trust_on_first_use, const NetworkOptions* network) {
            std::string config_json = json_text(config, "config");
            std::optional<SecretBuffer> pass = optional_secret_from(passphrase, "passphrase");
            std::optional<SecretBuffer> key = optional_secret_from(volume_key, "volume_key");
            if (pass && key) throw py::value_error("give passphrase or volume_key, not both");
            clevis::BindOptions options = bind_options(keyslot, pbkdf, verify, trust_on_first_use, network);
            return v.run([&](Volume& vol) {
                if (pass) return clevis::bind(vol, pin, config_json, pass->view(), options);
                return clevis::bind_with_volume_key(vol, pin, config_json, options, key ? &*key : nullptr);
            });
        }, "pin"_a, "config"_a, py::kw_only(), "passphrase"_a = py::none(), "volume_key"_a = py::none(),
           "keyslot"_a = -1, "pbkdf"_a = py::none(), "verify"_a = true, "trust_on_first_use"_a = false,
           "network"_a = py::none(),
           R"doc(Bind a Clevis pin ("tang", "tpm2", "sss" or "null"; config as JSON text or dict) in Clevis's token format.

Unlock with an existing `passphrase`, or a `volume_key`, or (neither) the volume key format() left in memory.
With verify=True the new token is decrypted through the real server(s) and tested against its keyslot.
Network and PBKDF work run with the GIL released.)doc")
        .def("unlock", [](PyVolume& v, std::optional<int> keyslot, bool trust_on_first_use,
                          const NetworkOptions* network) {
            PinOptions options = pin_options(trust_on_first_use, network);
            clevis::Unlocked unlocked = v.run([&](Volume& vol) { return clevis::unlock(vol, keyslot, options); });
            return PyUnlocked{unlocked.token, unlocked.keyslot, py::cast(Secret(std::move(unlocked.passphrase)))};
        }, py::kw_only(), "keyslot"_a = py::none(), "trust_on_first_use"_a = false, "network"_a = py::none(),
           "Recover a keyslot passphrase through the clevis tokens (NotFoundError when there is none).")
        .def("unbind", [](PyVolume& v, int keyslot, bool force) {
            v.run([&](Volume& vol) { clevis::unbind(vol, keyslot, force); });
        }, "keyslot"_a, py::kw_only(), "force"_a = false,
           "Remove the clevis token bound to `keyslot` and the keyslot (never the last one unless force=True).")
        .def("bindings", [](PyVolume& v) { return v.run([](Volume& vol) { return clevis::list(vol); }); },
             "Every clevis token, ordered by keyslot (like `clevis luks list`).")
        .def("regen", [](PyVolume& v, int keyslot, py::handle config, py::handle passphrase,
                         const std::optional<Pbkdf>& pbkdf, bool trust_on_first_use, const NetworkOptions* network) {
            clevis::RegenOptions options;
            options.bind = bind_options(-1, pbkdf, true, trust_on_first_use, network);
            if (!config.is_none()) options.config_json = json_text(config, "config");
            std::optional<SecretBuffer> pass = optional_secret_from(passphrase, "passphrase");
            if (pass) options.existing_passphrase = pass->view();
            return v.run([&](Volume& vol) { return clevis::regen(vol, keyslot, options); });
        }, "keyslot"_a, py::kw_only(), "config"_a = py::none(), "passphrase"_a = py::none(), "pbkdf"_a = py::none(),
           "trust_on_first_use"_a = false, "network"_a = py::none(),
           "Regenerate a binding in place (same keyslot and token) after a Tang key rotation, crash-safely; "
           "`passphrase` (an existing one) is used when the old binding no longer recovers.")
        .def("activate", [](PyVolume& v, const std::string& name, py::handle passphrase, int keyslot) {
            SecretBuffer pass = secret_from(passphrase, "passphrase");
            v.run([&](Volume& vol) { clevis::activate(vol, name, pass, keyslot); });
        }, "name"_a, "passphrase"_a, py::kw_only(), "keyslot"_a = -1,
           "Open the volume as /dev/mapper/NAME through dm-crypt.");
}

}  // namespace luksforge::python
