// libpq loaded on first use: see libpq_api.hpp.
#include "ledger/libpq_api.hpp"

#include "util/dynamic_library.hpp"

namespace luksforge::detail {

namespace {

LibpqApi load_libpq() {
    // libpq's ABI has been .so.5 since PostgreSQL 8.0 (2005).
    static const DynamicLibrary library("libpq.so.5", "a PostgreSQL ledger");
    LibpqApi api{};
    library.bind(api.conninfoParse, "PQconninfoParse");
    library.bind(api.conninfoFree, "PQconninfoFree");
    library.bind(api.freemem, "PQfreemem");
    library.bind(api.connectdbParams, "PQconnectdbParams");
    library.bind(api.status, "PQstatus");
    library.bind(api.setNoticeProcessor, "PQsetNoticeProcessor");
    library.bind(api.finish, "PQfinish");
    library.bind(api.errorMessage, "PQerrorMessage");
    library.bind(api.exec, "PQexec");
    library.bind(api.execParams, "PQexecParams");
    library.bind(api.resultStatus, "PQresultStatus");
    library.bind(api.resultErrorField, "PQresultErrorField");
    library.bind(api.ntuples, "PQntuples");
    library.bind(api.getvalue, "PQgetvalue");
    library.bind(api.getisnull, "PQgetisnull");
    library.bind(api.clear, "PQclear");
    return api;
}

}  // namespace

const LibpqApi& libpq() {
    static const LibpqApi api = load_libpq();
    return api;
}

}  // namespace luksforge::detail
