// Tang client (tang.hpp): fetch, verify and trust advertisements; thumbprints; the recovery exchange.
#include "bindings.hpp"

#include <luksforge/tang.hpp>

#include <pybind11/stl.h>

namespace luksforge::python {
namespace {

using namespace pybind11::literals;

std::string source_name(tang::TrustSource source) {
    switch (source) {
        case tang::TrustSource::pinned_thumbprint: return "pinned_thumbprint";
        case tang::TrustSource::offline_advertisement: return "offline_advertisement";
        case tang::TrustSource::trust_on_first_use: return "trust_on_first_use";
    }
    return "unknown";
}

// A Client used from several Python threads would share one curl handle: serialise its calls.
struct PyTangClient {
    std::shared_ptr<std::mutex> mutex = std::make_shared<std::mutex>();
    std::shared_ptr<tang::Client> client;
};

}  // namespace

void register_tang(py::module_& m) {
    py::class_<tang::Advertisement>(m, "Advertisement", "A Tang advertisement whose every signature verified.")
        .def_readonly("keys_json", &tang::Advertisement::keys_json, "The JWK set as compact JSON text.")
        .def_property_readonly("keys", [](const tang::Advertisement& a) { return json_loads(a.keys_json); },
                               "The JWK set parsed ({\"keys\": [...]}).")
        .def_readonly("signing_thumbprints", &tang::Advertisement::signing_thumbprints)
        .def_readonly("exchange_thumbprints", &tang::Advertisement::exchange_thumbprints)
        .def_readonly("signed", &tang::Advertisement::signed_jws)
        .def("has_signing_key", &tang::Advertisement::has_signing_key, "thp"_a,
             "Whether a verify key has thumbprint `thp` (S256 or S1).")
        .def("__repr__", [](const tang::Advertisement& a) {
            std::string text = "Advertisement(signing_thumbprints=[";
            for (std::size_t i = 0; i < a.signing_thumbprints.size(); ++i)
                text += (i ? ", '" : "'") + a.signing_thumbprints[i] + "'";
            return text + "])";
        });

    py::class_<tang::TrustedAdvertisement>(m, "TrustedAdvertisement",
                                           "An advertisement and why it is trusted.")
        .def_readonly("advertisement", &tang::TrustedAdvertisement::advertisement)
        .def_property_readonly("source", [](const tang::TrustedAdvertisement& t) { return source_name(t.source); },
                               "'pinned_thumbprint', 'offline_advertisement' or 'trust_on_first_use'.")
        .def("__repr__", [](const tang::TrustedAdvertisement& t) {
            return "TrustedAdvertisement(source='" + source_name(t.source) + "')";
        });

    m.def("parse_advertisement", [](py::handle json) {
        std::string text = json_text(json, "json");
        return tang::parse_advertisement(text);
    }, "json"_a, "Parse a JWS (as GET /adv returns) or a plain JWK set and verify every signature "
                 "(TangError when unsigned or badly signed).");
    m.def("jwk_thumbprint", [](py::handle jwk, const std::string& alg) {
        std::string text = json_text(jwk, "jwk");
        return tang::jwk_thumbprint(text, alg);
    }, "jwk"_a, "alg"_a = "S256", "A JWK's thumbprint, as `jose jwk thp` prints it.");

    py::class_<PyTangClient>(m, "TangClient", "One HTTP connection context to one Tang server (GIL released).")
        .def(py::init([](std::string url, const NetworkOptions* network) {
            PyTangClient c;
            c.client = std::make_shared<tang::Client>(std::move(url), (network ? *network : NetworkOptions{}));
            return c;
        }), "url"_a, py::kw_only(), "network"_a = py::none())
        .def_property_readonly("url", [](const PyTangClient& c) { return c.client->url(); })
        .def("fetch_advertisement", [](PyTangClient& c, std::optional<std::string> thp) {
            auto keep = c;
            py::gil_scoped_release release;
            std::lock_guard lock(*keep.mutex);
            return keep.client->fetch_advertisement(thp ? std::optional<std::string_view>(*thp) : std::nullopt);
        }, "thp"_a = py::none(), "GET /adv (or /adv/{thp}), signature-checked; trust is NOT decided here.")
        .def("recover", [](PyTangClient& c, const std::string& kid, py::handle request_jwk) {
            std::string jwk = json_text(request_jwk, "request_jwk");
            auto keep = c;
            py::gil_scoped_release release;
            std::lock_guard lock(*keep.mutex);
            return keep.client->recover(kid, jwk);
        }, "kid"_a, "request_jwk"_a, "POST /rec/{kid} with a public EC JWK; returns the reply JWK as JSON text.")
        .def("__repr__", [](const PyTangClient& c) { return "TangClient('" + c.client->url() + "')"; });

    m.def("fetch_advertisement", [](std::string url, std::optional<std::string> thp,
                                    const NetworkOptions* network) {
        const NetworkOptions limits = network ? *network : NetworkOptions{};
        py::gil_scoped_release release;
        tang::Client client(std::move(url), limits);
        return client.fetch_advertisement(thp ? std::optional<std::string_view>(*thp) : std::nullopt);
    }, "url"_a, py::kw_only(), "thp"_a = py::none(), "network"_a = py::none(),
    "Fetch and signature-check a Tang server's advertisement (trust is NOT decided: see trusted_advertisement).");

    m.def("trusted_advertisement", [](py::handle config, bool trust_on_first_use,
                                      const NetworkOptions* network) {
        std::string text = json_text(config, "config");
        PinOptions options = pin_options(trust_on_first_use, network);
        py::gil_scoped_release release;
        return tang::trusted_advertisement(tang::parse_config(text), options);
    }, "config"_a, py::kw_only(), "trust_on_first_use"_a = false, "network"_a = py::none(),
    R"doc(The advertisement for a Clevis tang config ({"url", "thp"} or {"url", "adv"}) as clevis-encrypt-tang
obtains it, and why it is trusted. Raises TangError (listing the thumbprints) when it is not trusted.)doc");
}

}  // namespace luksforge::python
