// Ledger: the public face of the key ledger. Picks the backend from the location (a file path → SQLite, a
// postgresql:// URL → PostgreSQL) and holds the lease given to reservations.
#include <luksforge/ledger.hpp>

#include "ledger/backend.hpp"
#include "util/json_util.hpp"

#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <ctime>

namespace luksforge {

namespace detail {

bool is_postgres_url(std::string_view location) {
    return location.starts_with("postgresql://") || location.starts_with("postgres://");
}

void prepare_record(LedgerRecord& record) {
    if (record.time.empty()) record.time = utc_timestamp();
    if (record.host.empty()) record.host = ledger_host_name();
}

void require_complete(const LedgerRecord& record) {
    if (record.fingerprint.empty() || record.image.empty() || record.event.empty())
        throw FormatError("ledger record needs a fingerprint, an image and an event");
}

[[noreturn]] void throw_limit(const LedgerRecord& record, std::uint64_t count, std::uint64_t max_instances,
                              const std::string& ledger) {
    throw LimitError("volume key " + record.fingerprint.substr(0, 16) + "... already has " + std::to_string(count) +
                     " instance" + (count == 1 ? "" : "s") + " in the ledger " + ledger +
                     "; the policy allows at most " + std::to_string(max_instances));
}

}  // namespace detail

namespace {

// Long enough for a copy of a large image; a killed builder's slot comes back after it.
constexpr std::int64_t kDefaultLeaseSeconds = 900;

std::int64_t lease_from_environment() {
    const char* text = std::getenv("LUKSFORGE_LEDGER_LEASE_SECONDS");
    if (text == nullptr || *text == '\0') return kDefaultLeaseSeconds;
    char* end = nullptr;
    const long long value = std::strtoll(text, &end, 10);
    if (*end != '\0' || value <= 0) throw FormatError("LUKSFORGE_LEDGER_LEASE_SECONDS must be a positive number");
    return value;
}

}  // namespace

std::string ledger_host_name() {
    char name[HOST_NAME_MAX + 1] = {};
    if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
    return name;
}

std::string utc_timestamp() {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&now, &tm);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return text;
}

struct Ledger::Impl {
    std::unique_ptr<detail::LedgerBackend> backend;
    std::filesystem::path location;
    std::int64_t lease_seconds = kDefaultLeaseSeconds;
};

Ledger::Ledger(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Ledger::Ledger(Ledger&&) noexcept = default;
Ledger& Ledger::operator=(Ledger&&) noexcept = default;
Ledger::~Ledger() noexcept = default;

sqlite3* Ledger::native_handle() const noexcept { return impl_->backend->sqlite_handle(); }
const std::filesystem::path& Ledger::path() const noexcept { return impl_->location; }

std::filesystem::path Ledger::default_path() { return "/var/lib/luksforge/ledger.db"; }

std::filesystem::path Ledger::default_location() {
    const char* env = std::getenv("LUKSFORGE_LEDGER");
    if (env != nullptr && *env != '\0') return env;
    return default_path();
}

bool Ledger::is_url(const std::filesystem::path& location) { return detail::is_postgres_url(location.native()); }

Ledger Ledger::open(const std::filesystem::path& location) {
    auto impl = std::make_unique<Impl>();
    impl->lease_seconds = lease_from_environment();
    impl->backend = is_url(location) ? detail::open_postgres_backend(location.native())
                                     : detail::open_sqlite_backend(location);
    impl->location = location;
    return Ledger(std::move(impl));
}

void Ledger::set_lease_seconds(std::int64_t seconds) {
    if (seconds <= 0) throw FormatError("a ledger lease must be at least one second");
    impl_->lease_seconds = seconds;
}
std::int64_t Ledger::lease_seconds() const noexcept { return impl_->lease_seconds; }

int Ledger::schema_version() const { return impl_->backend->schema_version(); }

std::int64_t Ledger::record(LedgerRecord record) {
    detail::prepare_record(record);
    return impl_->backend->record(record);
}

std::int64_t Ledger::reserve(LedgerRecord record, std::uint64_t max_instances) {
    detail::prepare_record(record);
    return impl_->backend->reserve(record, max_instances, impl_->lease_seconds);
}

void Ledger::commit(std::int64_t id) { impl_->backend->commit(id); }
void Ledger::release(std::int64_t id) { impl_->backend->release(id); }

std::uint64_t Ledger::count_instances(const std::string& fingerprint) const {
    return impl_->backend->count_instances(fingerprint);
}

std::vector<LedgerRecord> Ledger::records(const std::optional<std::string>& fingerprint) const {
    return impl_->backend->records(fingerprint);
}

std::string ledger_records_json(const std::vector<LedgerRecord>& records) {
    using detail::json_take;
    detail::JsonPtr array = json_take(json_array());
    for (const LedgerRecord& r : records) {
        json_t* o = json_object();
        json_object_set_new(o, "id", json_integer(r.id));
        json_object_set_new(o, "fingerprint", json_string(r.fingerprint.c_str()));
        json_object_set_new(o, "image", json_string(r.image.c_str()));
        json_object_set_new(o, "uuid", json_string(r.uuid.c_str()));
        json_object_set_new(o, "time", json_string(r.time.c_str()));
        json_object_set_new(o, "event", json_string(r.event.c_str()));
        json_object_set_new(o, "state", json_string(r.state.c_str()));
        json_object_set_new(o, "lease_expires", r.state == "committed" ? json_null() : json_integer(r.lease_expires));
        json_object_set_new(o, "policy_path", json_string(r.policy_path.c_str()));
        json_object_set_new(o, "policy_hash", json_string(r.policy_hash.c_str()));
        json_object_set_new(o, "host", json_string(r.host.c_str()));
        json_object_set_new(o, "max_instances", json_integer(static_cast<json_int_t>(r.max_instances)));
        json_array_append_new(array.get(), o);
    }
    return detail::json_dump(array.get(), JSON_INDENT(2) | JSON_PRESERVE_ORDER);
}

}  // namespace luksforge
