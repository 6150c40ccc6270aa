
/*
 * Copyright (C) ngx_http_dato_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_dato_sign.h"

#if (NGX_OPENSSL)
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#endif


#define NGX_HTTP_DATO_SIGN_PREFIX     "whsec_"

/* an HMAC-SHA256, and its base64 form in a "v1,..." entry */
#define NGX_HTTP_DATO_SIGN_MAC_LEN    32
#define NGX_HTTP_DATO_SIGN_B64_LEN    44

/* a header with more entries than this is not read further */
#define NGX_HTTP_DATO_SIGN_ENTRIES    16

/* the longest webhook-timestamp: Unix seconds, with room to spare */
#define NGX_HTTP_DATO_SIGN_TS_MAX     12


#if (NGX_OPENSSL)

static ngx_http_dato_sign_rc_e ngx_http_dato_sign_any(ngx_array_t *keys,
    ngx_http_dato_sign_headers_t *h, ngx_str_t *body, ngx_pool_t *pool);
static ngx_int_t ngx_http_dato_sign_mac(ngx_str_t *key, ngx_str_t *content,
    u_char *mac);
static ngx_uint_t ngx_http_dato_sign_match(ngx_str_t *entry, u_char *mac);

#endif

static ngx_http_dato_sign_rc_e ngx_http_dato_sign_check_headers(
    ngx_http_dato_sign_headers_t *h, time_t now);


/*
 * Decodes "whsec_<base64>" into the HMAC key, at configuration time.
 * Returns NULL, or what is wrong for the directive's message (which never
 * shows the secret itself).
 */

char *
ngx_http_dato_sign_key(ngx_pool_t *pool, ngx_str_t *secret, ngx_str_t *key)
{
#if (NGX_OPENSSL)
    ngx_str_t  b64;

    b64 = *secret;

    if (b64.len <= sizeof(NGX_HTTP_DATO_SIGN_PREFIX) - 1
        || ngx_strncmp(b64.data, NGX_HTTP_DATO_SIGN_PREFIX,
                       sizeof(NGX_HTTP_DATO_SIGN_PREFIX) - 1)
           != 0)
    {
        return "does not start with \"" NGX_HTTP_DATO_SIGN_PREFIX "\"";
    }

    b64.data += sizeof(NGX_HTTP_DATO_SIGN_PREFIX) - 1;
    b64.len -= sizeof(NGX_HTTP_DATO_SIGN_PREFIX) - 1;

    if (ngx_base64_decoded_length(b64.len) > NGX_HTTP_DATO_SIGN_KEY_MAX + 2) {
        return "is longer than 64 bytes";
    }

    key->data = ngx_pnalloc(pool, ngx_base64_decoded_length(b64.len));
    if (key->data == NULL) {
        return NGX_CONF_ERROR;
    }

    if (ngx_decode_base64(key, &b64) != NGX_OK) {
        return "is not base64 after \"" NGX_HTTP_DATO_SIGN_PREFIX "\"";
    }

    if (key->len < NGX_HTTP_DATO_SIGN_KEY_MIN
        || key->len > NGX_HTTP_DATO_SIGN_KEY_MAX)
    {
        return "must decode to 24 to 64 bytes";
    }

    return NULL;

#else

    return "needs nginx built with OpenSSL";

#endif
}


/*
 * A call passes when its timestamp is within the tolerance of now and any
 * of its "v1," signatures is the MAC under any of the keys.  Everything
 * here comes from the network: lengths are bounded before anything is
 * copied or decoded, and MACs are compared in constant time.
 */

ngx_http_dato_sign_rc_e
ngx_http_dato_sign_verify(ngx_array_t *keys, ngx_http_dato_sign_headers_t *h,
    ngx_str_t *body, time_t now, ngx_pool_t *pool)
{
    ngx_http_dato_sign_rc_e  rc;

    rc = ngx_http_dato_sign_check_headers(h, now);
    if (rc != NGX_HTTP_DATO_SIGN_OK) {
        return rc;
    }

#if (NGX_OPENSSL)
    return ngx_http_dato_sign_any(keys, h, body, pool);
#else
    return NGX_HTTP_DATO_SIGN_MISMATCH;
#endif
}


#if (NGX_OPENSSL)

static ngx_http_dato_sign_rc_e
ngx_http_dato_sign_any(ngx_array_t *keys, ngx_http_dato_sign_headers_t *h,
    ngx_str_t *body, ngx_pool_t *pool)
{
    u_char      *p, *last, *start;
    ngx_str_t    content, entry, *key;
    ngx_uint_t   i, n;
    u_char       mac[NGX_HTTP_DATO_SIGN_MAC_LEN];

    content.len = h->id.len + 1 + h->timestamp.len + 1 + body->len;
    content.data = ngx_pnalloc(pool, content.len);
    if (content.data == NULL) {
        return NGX_HTTP_DATO_SIGN_MISMATCH;
    }

    p = ngx_cpymem(content.data, h->id.data, h->id.len);
    *p++ = '.';
    p = ngx_cpymem(p, h->timestamp.data, h->timestamp.len);
    *p++ = '.';

    if (body->len) {
        ngx_memcpy(p, body->data, body->len);
    }

    key = keys->elts;

    for (i = 0; i < keys->nelts; i++) {

        if (ngx_http_dato_sign_mac(&key[i], &content, mac) != NGX_OK) {
            continue;
        }

        p = h->signature.data;
        last = p + h->signature.len;

        for (n = 0; p < last && n < NGX_HTTP_DATO_SIGN_ENTRIES; n++) {

            while (p < last && *p == ' ') {
                p++;
            }

            start = p;

            while (p < last && *p != ' ') {
                p++;
            }

            entry.data = start;
            entry.len = p - start;

            if (entry.len && ngx_http_dato_sign_match(&entry, mac)) {
                return NGX_HTTP_DATO_SIGN_OK;
            }
        }
    }

    return NGX_HTTP_DATO_SIGN_MISMATCH;
}

#endif


static ngx_http_dato_sign_rc_e
ngx_http_dato_sign_check_headers(ngx_http_dato_sign_headers_t *h, time_t now)
{
    time_t      ts;
    ngx_uint_t  i;

    if (h->id.len == 0 || h->timestamp.len == 0 || h->signature.len == 0) {
        return NGX_HTTP_DATO_SIGN_MISSING;
    }

    if (h->id.len > NGX_HTTP_DATO_SIGN_ID_MAX) {
        return NGX_HTTP_DATO_SIGN_BAD_ID;
    }

    /* the ID is signed, but it is also a key and a log line's part */
    for (i = 0; i < h->id.len; i++) {
        if (h->id.data[i] <= ' ' || h->id.data[i] >= 0x7f
            || h->id.data[i] == '"' || h->id.data[i] == '\\')
        {
            return NGX_HTTP_DATO_SIGN_BAD_ID;
        }
    }

    if (h->timestamp.len > NGX_HTTP_DATO_SIGN_TS_MAX) {
        return NGX_HTTP_DATO_SIGN_BAD_TIMESTAMP;
    }

    ts = ngx_atotm(h->timestamp.data, h->timestamp.len);
    if (ts == NGX_ERROR) {
        return NGX_HTTP_DATO_SIGN_BAD_TIMESTAMP;
    }

    if (ts < now - NGX_HTTP_DATO_SIGN_TOLERANCE) {
        return NGX_HTTP_DATO_SIGN_STALE;
    }

    if (ts > now + NGX_HTTP_DATO_SIGN_TOLERANCE) {
        return NGX_HTTP_DATO_SIGN_FUTURE;
    }

    return NGX_HTTP_DATO_SIGN_OK;
}


#if (NGX_OPENSSL)

static ngx_int_t
ngx_http_dato_sign_mac(ngx_str_t *key, ngx_str_t *content, u_char *mac)
{
    unsigned int  len;

    len = NGX_HTTP_DATO_SIGN_MAC_LEN;

    if (HMAC(EVP_sha256(), key->data, (int) key->len, content->data,
             content->len, mac, &len)
        == NULL
        || len != NGX_HTTP_DATO_SIGN_MAC_LEN)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* "v1,<base64 of 32 bytes>"; other versions (v1a, ...) are not ours */

static ngx_uint_t
ngx_http_dato_sign_match(ngx_str_t *entry, u_char *mac)
{
    ngx_str_t  b64, decoded;
    u_char     buf[NGX_HTTP_DATO_SIGN_MAC_LEN + 2];

    if (entry->len != 3 + NGX_HTTP_DATO_SIGN_B64_LEN
        || ngx_strncmp(entry->data, "v1,", 3) != 0)
    {
        return 0;
    }

    b64.data = entry->data + 3;
    b64.len = NGX_HTTP_DATO_SIGN_B64_LEN;

    decoded.data = buf;

    if (ngx_decode_base64(&decoded, &b64) != NGX_OK
        || decoded.len != NGX_HTTP_DATO_SIGN_MAC_LEN)
    {
        return 0;
    }

    return CRYPTO_memcmp(buf, mac, NGX_HTTP_DATO_SIGN_MAC_LEN) == 0;
}

#endif


/* the JSON error's detail, and the log line's: what failed, no secret */

const char *
ngx_http_dato_sign_reason(ngx_http_dato_sign_rc_e rc)
{
    switch (rc) {

    case NGX_HTTP_DATO_SIGN_OK:
        return "signature verified";

    case NGX_HTTP_DATO_SIGN_MISSING:
        return "webhook-id, webhook-timestamp and webhook-signature "
               "headers are required";

    case NGX_HTTP_DATO_SIGN_BAD_ID:
        return "webhook-id is not a printable token of at most 256 bytes";

    case NGX_HTTP_DATO_SIGN_BAD_TIMESTAMP:
        return "webhook-timestamp is not Unix seconds";

    case NGX_HTTP_DATO_SIGN_STALE:
        return "webhook-timestamp is more than 5 minutes old";

    case NGX_HTTP_DATO_SIGN_FUTURE:
        return "webhook-timestamp is more than 5 minutes ahead";

    default:
        return "no signature matches";
    }
}
