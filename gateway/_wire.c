/* gateway._wire: AES-GCM sealing and opening of SSH binary packets, in C.
 *
 * The relay's per-packet work in Python (gateway/sshtune.py's fast paths)
 * framed a CHANNEL_DATA packet from five pieces, joined them, called
 * cryptography's AESGCM (which checks its arguments and copies the result
 * twice), and stepped the nonce with int.from_bytes/to_bytes: ~20 bytecodes
 * and five allocations for a one-byte keystroke, four times per echoed key.
 * Here each packet is one allocation and one OpenSSL EVP call sequence, with
 * the key schedule kept for the key's life.
 *
 * This module owns packet crypto for the ciphers "aes128-gcm@openssh.com"
 * and "aes256-gcm@openssh.com" (RFC 5647 as OpenSSH uses it: the 4-byte
 * length is associated data, the 16-byte tag follows the ciphertext, the
 * nonce's 64-bit counter goes up by one per packet), and the splice: the
 * steady state of a gateway session's data, opened on one leg and sealed
 * for the other without a Python call per packet (splice_run). The state
 * it reads and writes is asyncssh's own: the cipher objects' ``_key`` and
 * ``_iv``, and for the splice the channels' windows and the connections'
 * sequence numbers and rekey counts, moved as asyncssh and
 * gateway.sshtune's Python path move them, so that path and this one take
 * turns on one connection. The splice decides nothing: whatever is not the
 * plain steady state (see run_start) goes back to the Python path, which
 * also records what the splice relayed. gateway.sshtune falls back to its
 * pure-Python path when this module is not built (SHELLGATE_NATIVE=0 also
 * turns it off; SHELLGATE_SPLICE=0 only the splice).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <sys/random.h>
#include <string.h>

#define TAG_LEN 16
#define IV_LEN 12
#define MSG_CHANNEL_DATA 94

/* -- the key schedule, cached on asyncssh's cipher object ------------------ */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ctx;
    int encrypting; /* -1 not yet initialised, 0 open, 1 seal */
} GcmKey;

static void GcmKey_dealloc(GcmKey *self) {
    if (self->ctx)
        EVP_CIPHER_CTX_free(self->ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject GcmKeyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._wire.GcmKey",
    .tp_basicsize = sizeof(GcmKey),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)GcmKey_dealloc,
    .tp_doc = "An AES-GCM key schedule for one asyncssh cipher object.",
};

static PyObject *str_key, *str_iv, *str_cached;

/* The GcmKey cached on ``cipher`` (a new one from ``cipher._key`` the first
 * time). A cipher object lives for one key and one direction, as asyncssh
 * makes a new one on every key exchange. Returns a new reference. */
static GcmKey *gcm_key(PyObject *cipher, int encrypting) {
    PyObject *dict = PyObject_GenericGetDict(cipher, NULL);
    if (dict == NULL)
        return NULL;
    PyObject *cached = PyDict_GetItemWithError(dict, str_cached);
    if (cached != NULL && Py_IS_TYPE(cached, &GcmKeyType) &&
        ((GcmKey *)cached)->encrypting == encrypting) {
        Py_INCREF(cached);
        Py_DECREF(dict);
        return (GcmKey *)cached;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(dict);
        return NULL;
    }
    PyObject *key = PyDict_GetItemWithError(dict, str_key);
    if (key == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "cipher has no _key");
        Py_DECREF(dict);
        return NULL;
    }
    Py_buffer kb;
    if (PyObject_GetBuffer(key, &kb, PyBUF_SIMPLE) < 0) {
        Py_DECREF(dict);
        return NULL;
    }
    const EVP_CIPHER *alg = kb.len == 16 ? EVP_aes_128_gcm()
                          : kb.len == 32 ? EVP_aes_256_gcm()
                                         : NULL;
    GcmKey *gk = NULL;
    if (alg == NULL) {
        PyErr_SetString(PyExc_ValueError, "AES-GCM key must be 16 or 32 bytes");
        goto done;
    }
    gk = PyObject_New(GcmKey, &GcmKeyType);
    if (gk == NULL)
        goto done;
    gk->encrypting = encrypting;
    gk->ctx = EVP_CIPHER_CTX_new();
    if (gk->ctx == NULL ||
        !EVP_CipherInit_ex(gk->ctx, alg, NULL, NULL, NULL, encrypting) ||
        !EVP_CIPHER_CTX_ctrl(gk->ctx, EVP_CTRL_GCM_SET_IVLEN, IV_LEN, NULL) ||
        !EVP_CipherInit_ex(gk->ctx, NULL, NULL, kb.buf, NULL, encrypting)) {
        Py_CLEAR(gk);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up AES-GCM");
        goto done;
    }
    if (PyDict_SetItem(dict, str_cached, (PyObject *)gk) < 0)
        Py_CLEAR(gk);
done:
    PyBuffer_Release(&kb);
    Py_DECREF(dict);
    return gk;
}

/* cipher._iv as 12 bytes in ``iv``; 0 on success. */
static int read_iv(PyObject *cipher, unsigned char *iv) {
    PyObject *v = PyObject_GetAttr(cipher, str_iv);
    if (v == NULL)
        return -1;
    if (!PyBytes_Check(v) || PyBytes_GET_SIZE(v) != IV_LEN) {
        Py_DECREF(v);
        PyErr_SetString(PyExc_ValueError, "cipher._iv must be 12 bytes");
        return -1;
    }
    memcpy(iv, PyBytes_AS_STRING(v), IV_LEN);
    Py_DECREF(v);
    return 0;
}

/* RFC 5647's nonce step (asyncssh's GCMCipher._update_iv): the 64-bit
 * invocation counter after the 4-byte fixed field goes up by one, wrapping. */
static int step_iv(PyObject *cipher, const unsigned char *iv) {
    unsigned char next[IV_LEN];
    memcpy(next, iv, IV_LEN);
    for (int i = IV_LEN - 1; i >= 4; i--)
        if (++next[i] != 0)
            break;
    PyObject *v = PyBytes_FromStringAndSize((const char *)next, IV_LEN);
    if (v == NULL)
        return -1;
    int r = PyObject_SetAttr(cipher, str_iv, v);
    Py_DECREF(v);
    return r;
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Padding bytes, cut from a pool that getrandom() refills: one syscall per
 * 4 KiB of padding instead of one per packet (as asyncssh's os.urandom). */
static unsigned char pad_pool[4096];
static size_t pad_at = sizeof(pad_pool);

static int padding(unsigned char *out, size_t n) {
    if (pad_at + n > sizeof(pad_pool)) {
        size_t got = 0;
        while (got < sizeof(pad_pool)) {
            ssize_t r = getrandom(pad_pool + got, sizeof(pad_pool) - got, 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                PyErr_SetFromErrno(PyExc_OSError);
                return -1;
            }
            got += (size_t)r;
        }
        pad_at = 0;
    }
    memcpy(out, pad_pool + pad_at, n);
    pad_at += n;
    return 0;
}

/* One AES-GCM pass with ``gk``: ``len`` bytes from ``in`` to ``out`` (may
 * be the same), the 4-byte length ``hdr`` as associated data. Sealing writes
 * the tag to ``tag``; opening checks it. 1: done; 0: the tag did not verify;
 * -1: OpenSSL failed (an exception is set). */
static int gcm_pass(GcmKey *gk, const unsigned char *iv, const unsigned char *hdr,
                    const unsigned char *in, unsigned char *out, int len,
                    unsigned char *tag, int sealing) {
    int outl;
    if (!EVP_CipherInit_ex(gk->ctx, NULL, NULL, NULL, iv, sealing) ||
        !EVP_CipherUpdate(gk->ctx, NULL, &outl, hdr, 4) ||
        !EVP_CipherUpdate(gk->ctx, out, &outl, in, len) ||
        (!sealing && !EVP_CIPHER_CTX_ctrl(gk->ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag)))
        goto failed;
    if (EVP_CipherFinal_ex(gk->ctx, out + len, &outl) <= 0) {
        if (!sealing)
            return 0;
        goto failed;
    }
    if (sealing && !EVP_CIPHER_CTX_ctrl(gk->ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag))
        goto failed;
    return 1;
failed:
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL AES-GCM failed");
    return -1;
}

static int as_long(PyObject *o, long *out, const char *what) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0) {
        PyErr_Format(PyExc_ValueError, "%s must not be negative", what);
        return -1;
    }
    *out = v;
    return 0;
}

PyDoc_STRVAR(seal_data_doc,
"seal_data(cipher, send_chan, data, blocksize, enchdrlen) -> bytes\n\n"
"One CHANNEL_DATA packet for the peer's channel ``send_chan`` carrying\n"
"``data``, framed and padded as asyncssh's send_packet does, sealed with\n"
"``cipher`` (an asyncssh GCMCipher) and its nonce stepped: the bytes to\n"
"send (length, ciphertext, tag). The packet length for the rekey count is\n"
"``len(result) - 20``.");

static PyObject *seal_data(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "seal_data takes 5 arguments");
        return NULL;
    }
    PyObject *cipher = args[0];
    long chan, blocksize, enchdrlen;
    if (as_long(args[1], &chan, "send_chan") < 0 ||
        as_long(args[3], &blocksize, "blocksize") < 0 ||
        as_long(args[4], &enchdrlen, "enchdrlen") < 0)
        return NULL;
    if (blocksize < 8 || blocksize > 255 || chan > 0xFFFFFFFFL) {
        PyErr_SetString(PyExc_ValueError, "bad blocksize or channel");
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = NULL;
    GcmKey *gk = NULL;
    unsigned char iv[IV_LEN];
    Py_ssize_t n = data.len;
    if (n > 0x7FFFFFF) {
        PyErr_SetString(PyExc_ValueError, "data too long for one packet");
        goto done;
    }
    long padlen = (-(enchdrlen + 9 + (long)n)) % blocksize;
    if (padlen < 0)
        padlen += blocksize;
    if (padlen < 4)
        padlen += blocksize;
    Py_ssize_t pktlen = 1 + 9 + n + padlen;
    gk = gcm_key(cipher, 1);
    if (gk == NULL || read_iv(cipher, iv) < 0)
        goto done;
    out = PyBytes_FromStringAndSize(NULL, 4 + pktlen + TAG_LEN);
    if (out == NULL)
        goto done;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    put_u32(p, (uint32_t)pktlen);
    unsigned char *body = p + 4;
    body[0] = (unsigned char)padlen;
    body[1] = MSG_CHANNEL_DATA;
    put_u32(body + 2, (uint32_t)chan);
    put_u32(body + 6, (uint32_t)n);
    memcpy(body + 10, data.buf, (size_t)n);
    if (padding(body + 10 + n, (size_t)padlen) < 0)
        goto fail;
    if (gcm_pass(gk, iv, p, body, body, (int)pktlen, body + pktlen, 1) < 1 ||
        step_iv(cipher, iv) < 0)
        goto fail;
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_XDECREF(gk);
    PyBuffer_Release(&data);
    return out;
}

PyDoc_STRVAR(open_packet_doc,
"open_packet(cipher, buf, pos, stop) -> bytes | None\n\n"
"The packet in ``buf[pos:stop]`` (4-byte length, ciphertext, 16-byte tag)\n"
"opened with ``cipher`` (an asyncssh GCMCipher), its nonce stepped: the\n"
"plaintext (padding length, payload, padding). None when the tag does not\n"
"verify; the nonce is then left as it was, so asyncssh's own path can\n"
"raise its MAC error on the same packet.");

static PyObject *open_packet(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "open_packet takes 4 arguments");
        return NULL;
    }
    PyObject *cipher = args[0];
    Py_ssize_t pos = PyLong_AsSsize_t(args[2]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[3]);
    if ((pos == -1 || stop == -1) && PyErr_Occurred())
        return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(args[1], &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = NULL;
    GcmKey *gk = NULL;
    unsigned char iv[IV_LEN];
    Py_ssize_t clen = stop - pos - 4 - TAG_LEN;
    if (pos < 0 || stop > buf.len || clen < 0 || clen > 0x7FFFFFF) {
        PyErr_SetString(PyExc_ValueError, "packet bounds outside the buffer");
        goto done;
    }
    gk = gcm_key(cipher, 0);
    if (gk == NULL || read_iv(cipher, iv) < 0)
        goto done;
    const unsigned char *p = (const unsigned char *)buf.buf + pos;
    out = PyBytes_FromStringAndSize(NULL, clen);
    if (out == NULL)
        goto done;
    unsigned char *plain = (unsigned char *)PyBytes_AS_STRING(out);
    unsigned char tag[TAG_LEN];
    memcpy(tag, p + 4 + clen, TAG_LEN);
    int opened = gcm_pass(gk, iv, p, p + 4, plain, (int)clen, tag, 0);
    if (opened == 0) {
        Py_DECREF(out); /* the tag did not verify */
        Py_INCREF(Py_None);
        out = Py_None;
    } else if (opened < 0 || step_iv(cipher, iv) < 0) {
        Py_CLEAR(out);
    }
done:
    Py_XDECREF(gk);
    PyBuffer_Release(&buf);
    return out;
}

/* -- the splice: CHANNEL_DATA from one leg sealed straight into the other -- */

/* Names of the asyncssh and gateway attributes the splice reads and writes,
 * interned once; and what configure() was given. */
static PyObject *n_transport, *n_recv_seq, *n_auth_final, *n_recv_state, *n_recv_window,
    *n_init_recv_window, *n_encoding, *n_session, *n_send_state, *n_recv_paused, *n_sg_leg,
    *n_live, *n_client, *n_target_chan, *n_closed, *n_out, *n_chan, *n_send_buf,
    *n_send_window, *n_conn, *n_send_chan, *n_send_pktsize, *n_send_paused,
    *n_send_encryption, *n_kex_complete, *n_auth_complete, *n_compressor,
    *n_rekey_bytes_sent, *n_rekey_bytes, *n_rekey_seconds, *n_rekey_time, *n_send_seq,
    *n_send_blocksize, *n_send_enchdrlen, *n_cipher, *n_write, *s_open, *s_close_pending,
    *s_closed;
static unsigned long long spliced_packets, spliced_writes; /* see splice_stats() */
static PyObject *gcm_enc_type; /* asyncssh's GCMEncryption */
static PyObject *plain_types;  /* channel classes that take data as SSHChannel does */

/* One leg's run of consecutive CHANNEL_DATA packets for one channel, held
 * until the run ends and then sealed for the other leg in one write. */
typedef struct {
    PyObject *chan;   /* receiving channel */
    PyObject *live;   /* its LiveConnection */
    long leg;         /* 1: client -> target, 2: target -> client */
    PyObject *peer;   /* the other leg's channel */
    PyObject *pconn;  /* and its connection */
    PyObject *cipher; /* the other leg's sending GCMCipher */
    PyObject *write;  /* the other leg's transport.write */
    long long send_window, pktsize, send_chan, blocksize, enchdrlen;
    PyObject *parts;  /* the opened packets (payload at 10, datalen bytes) */
    Py_ssize_t total; /* payload bytes held */
} Run;

static void run_clear(Run *r) {
    Py_CLEAR(r->chan);
    Py_CLEAR(r->live);
    Py_CLEAR(r->peer);
    Py_CLEAR(r->pconn);
    Py_CLEAR(r->cipher);
    Py_CLEAR(r->write);
    Py_CLEAR(r->parts);
    r->total = 0;
}

/* attr of o as a long long; -1 with an exception when it is not an int */
static int get_ll(PyObject *o, PyObject *name, long long *out) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    if (!PyLong_Check(v)) {
        Py_DECREF(v);
        PyErr_SetString(PyExc_TypeError, "not an int");
        return -1;
    }
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int set_ll(PyObject *o, PyObject *name, long long v) {
    PyObject *x = PyLong_FromLongLong(v);
    if (x == NULL)
        return -1;
    int r = PyObject_SetAttr(o, name, x);
    Py_DECREF(x);
    return r;
}

/* 1 when attr of o is None, 0 when not, -1 on error */
static int attr_is_none(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int r = v == Py_None;
    Py_DECREF(v);
    return r;
}

/* truth of attr of o; -1 on error */
static int attr_true(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* 1 when attr of o is the string s, 0 when not, -1 on error */
static int attr_is_str(PyObject *o, PyObject *name, PyObject *s) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int r = v == s || (PyUnicode_Check(v) && PyUnicode_Compare(v, s) == 0);
    Py_DECREF(v);
    return r;
}

/* 1 when attr of o is false, 0 when true, -1 on error */
static int attr_false(PyObject *o, PyObject *name) {
    int r = attr_true(o, name);
    return r < 0 ? -1 : !r;
}

/* 1 when attr of o is not None, 0 when it is, -1 on error */
static int attr_not_none(PyObject *o, PyObject *name) {
    int r = attr_is_none(o, name);
    return r < 0 ? -1 : !r;
}

static int plain_type(PyObject *o) {
    Py_ssize_t n = PyTuple_GET_SIZE(plain_types);
    for (Py_ssize_t i = 0; i < n; i++)
        if ((PyObject *)Py_TYPE(o) == PyTuple_GET_ITEM(plain_types, i))
            return 1;
    return 0;
}

/* Whether ``chan``'s data can go straight to the other leg, as
 * gateway.sshtune's receive loop, LiveConnection.from_client/from_target and
 * sshtune's SSHChannel.write would take it on their direct paths; fills
 * ``r`` (a new run) when it can. 1 yes, 0 no, -1 on error. Everything that
 * is not the plain steady state of an attached session (a paused reader, a
 * window to reopen, output gathered for the next loop turn, a rekey due,
 * a closing channel, a detached shell...) is left to the Python path. */
static int run_start(Run *r, PyObject *chan, Py_ssize_t datalen, double now) {
    PyObject *session = NULL, *live = NULL, *peer = NULL, *pconn = NULL, *enc = NULL,
             *transport = NULL, *legobj = NULL;
    int ok = -1;
    long long recv_window, init_window, v, v2;
    long leg;
#define STEP(expr) do { int c_ = (expr); if (c_ <= 0) { ok = c_; goto done; } } while (0)
    STEP(plain_type(chan));
    STEP(attr_is_str(chan, n_recv_state, s_open));
    STEP(attr_is_none(chan, n_encoding));
    STEP(attr_false(chan, n_recv_paused));
    {
        int c1 = attr_is_str(chan, n_send_state, s_close_pending);
        int c2 = c1 < 0 ? -1 : attr_is_str(chan, n_send_state, s_closed);
        STEP(c2 < 0 ? -1 : !(c1 || c2));
    }
    if (get_ll(chan, n_recv_window, &recv_window) < 0 ||
        get_ll(chan, n_init_recv_window, &init_window) < 0)
        goto done;
    /* below half, asyncssh sends a WINDOW_ADJUST on delivery: Python's job */
    STEP(datalen <= recv_window && 2 * (recv_window - datalen) >= init_window);
    session = PyObject_GetAttr(chan, n_session);
    if (session == NULL)
        goto done;
    if (_PyObject_LookupAttr(session, n_sg_leg, &legobj) < 0)
        goto done;
    STEP(legobj != NULL && PyLong_Check(legobj));
    leg = PyLong_AsLong(legobj);
    live = PyObject_GetAttr(session, n_live);
    if (live == NULL)
        goto done;
    STEP(live != Py_None);
    STEP(attr_false(live, n_closed));
    if (leg == 1) {
        PyObject *client = PyObject_GetAttr(live, n_client);
        if (client == NULL)
            goto done;
        int mine = client == session;
        Py_DECREF(client);
        STEP(mine);
        peer = PyObject_GetAttr(live, n_target_chan);
    } else if (leg == 2) {
        STEP(attr_false(live, n_out)); /* output gathered this turn goes first */
        PyObject *client = PyObject_GetAttr(live, n_client);
        if (client == NULL)
            goto done;
        if (client == Py_None) {
            Py_DECREF(client);
            ok = 0;
            goto done;
        }
        peer = PyObject_GetAttr(client, n_chan);
        Py_DECREF(client);
    } else {
        ok = 0;
        goto done;
    }
    if (peer == NULL)
        goto done;
    STEP(peer != Py_None && plain_type(peer));
    STEP(attr_false(peer, n_send_buf));
    STEP(attr_is_str(peer, n_send_state, s_open));
    STEP(attr_is_none(peer, n_encoding));
    STEP(attr_false(peer, n_send_paused));
    if (get_ll(peer, n_send_window, &r->send_window) < 0 ||
        get_ll(peer, n_send_pktsize, &r->pktsize) < 0)
        goto done;
    STEP(r->send_window >= datalen && r->pktsize > 0);
    STEP(attr_not_none(peer, n_send_chan));
    if (get_ll(peer, n_send_chan, &r->send_chan) < 0)
        goto done;
    pconn = PyObject_GetAttr(peer, n_conn);
    if (pconn == NULL)
        goto done;
    STEP(pconn != Py_None);
    enc = PyObject_GetAttr(pconn, n_send_encryption);
    if (enc == NULL)
        goto done;
    STEP((PyObject *)Py_TYPE(enc) == gcm_enc_type);
    transport = PyObject_GetAttr(pconn, n_transport);
    if (transport == NULL)
        goto done;
    STEP(transport != Py_None);
    STEP(attr_true(pconn, n_kex_complete));
    STEP(attr_true(pconn, n_auth_complete));
    STEP(attr_is_none(pconn, n_compressor));
    if (get_ll(pconn, n_rekey_bytes_sent, &v) < 0 || get_ll(pconn, n_rekey_bytes, &v2) < 0)
        goto done;
    STEP(v < v2);
    {
        PyObject *secs = PyObject_GetAttr(pconn, n_rekey_seconds);
        if (secs == NULL)
            goto done;
        int due = PyObject_IsTrue(secs);
        Py_DECREF(secs);
        if (due > 0) {
            PyObject *t = PyObject_GetAttr(pconn, n_rekey_time);
            if (t == NULL)
                goto done;
            double when = PyFloat_AsDouble(t);
            Py_DECREF(t);
            if (when == -1.0 && PyErr_Occurred())
                goto done;
            due = now >= when;
        }
        STEP(due < 0 ? -1 : !due);
    }
    if (get_ll(pconn, n_send_blocksize, &r->blocksize) < 0 ||
        get_ll(pconn, n_send_enchdrlen, &r->enchdrlen) < 0)
        goto done;
    STEP(r->blocksize >= 8 && r->blocksize <= 255);
    r->cipher = PyObject_GetAttr(enc, n_cipher);
    r->write = PyObject_GetAttr(transport, n_write);
    r->parts = PyList_New(0);
    if (r->cipher == NULL || r->write == NULL || r->parts == NULL) {
        run_clear(r);
        goto done;
    }
    Py_INCREF(chan);
    r->chan = chan;
    r->live = live;
    live = NULL;
    r->peer = peer;
    peer = NULL;
    r->pconn = pconn;
    pconn = NULL;
    r->leg = leg;
    r->total = 0;
    ok = 1;
done:
#undef STEP
    Py_XDECREF(session);
    Py_XDECREF(legobj);
    Py_XDECREF(live);
    Py_XDECREF(peer);
    Py_XDECREF(pconn);
    Py_XDECREF(enc);
    Py_XDECREF(transport);
    return ok;
}

/* Seals one CHANNEL_DATA packet for ``send_chan`` carrying data[0:n] at
 * ``p`` (4 + pktlen + TAG_LEN bytes), stepping ``iv``. Returns pktlen, or
 * -1 on error. */
static Py_ssize_t seal_at(GcmKey *gk, unsigned char *iv, unsigned char *p, long long send_chan,
                          const unsigned char *data, Py_ssize_t n, long blocksize,
                          long enchdrlen) {
    long padlen = (-(enchdrlen + 9 + (long)n)) % blocksize;
    if (padlen < 0)
        padlen += blocksize;
    if (padlen < 4)
        padlen += blocksize;
    Py_ssize_t pktlen = 1 + 9 + n + padlen;
    put_u32(p, (uint32_t)pktlen);
    unsigned char *body = p + 4;
    body[0] = (unsigned char)padlen;
    body[1] = MSG_CHANNEL_DATA;
    put_u32(body + 2, (uint32_t)send_chan);
    put_u32(body + 6, (uint32_t)n);
    memcpy(body + 10, data, (size_t)n);
    if (padding(body + 10 + n, (size_t)padlen) < 0 ||
        gcm_pass(gk, iv, p, body, body, (int)pktlen, body + pktlen, 1) < 1)
        return -1;
    for (int i = IV_LEN - 1; i >= 4; i--)
        if (++iv[i] != 0)
            break;
    return pktlen;
}

static Py_ssize_t sealed_size(Py_ssize_t n, long blocksize, long enchdrlen) {
    long padlen = (-(enchdrlen + 9 + (long)n)) % blocksize;
    if (padlen < 0)
        padlen += blocksize;
    if (padlen < 4)
        padlen += blocksize;
    return 4 + 1 + 9 + n + padlen + TAG_LEN;
}

/* The held run, joined, sealed for the other leg in packets of at most its
 * packet size and written in one call; (live, leg, data) appended to
 * ``done`` for the recording. Clears the run. 0, or -1 on error. */
static int run_flush(Run *r, PyObject *done) {
    if (r->chan == NULL)
        return 0;
    int ok = -1;
    PyObject *data = NULL, *wire = NULL, *res = NULL, *item = NULL;
    GcmKey *gk = NULL;
    unsigned char iv[IV_LEN];
    Py_ssize_t nparts = PyList_GET_SIZE(r->parts);
    if (nparts == 0) {
        ok = 0;
        goto done;
    }
    data = PyBytes_FromStringAndSize(NULL, r->total);
    if (data == NULL)
        goto done;
    unsigned char *d = (unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t at = 0;
    for (Py_ssize_t i = 0; i < nparts; i++) {
        PyObject *pd = PyList_GET_ITEM(r->parts, i);
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(pd);
        Py_ssize_t len = PyBytes_GET_SIZE(pd) - b[0] - 10;
        memcpy(d + at, b + 10, (size_t)len);
        at += len;
    }
    Py_ssize_t total = r->total, size = 0, npk = 0;
    for (Py_ssize_t o = 0; o < total; o += r->pktsize) {
        Py_ssize_t n = total - o < r->pktsize ? total - o : (Py_ssize_t)r->pktsize;
        size += sealed_size(n, (long)r->blocksize, (long)r->enchdrlen);
        npk++;
    }
    gk = gcm_key(r->cipher, 1);
    if (gk == NULL || read_iv(r->cipher, iv) < 0)
        goto done;
    wire = PyBytes_FromStringAndSize(NULL, size);
    if (wire == NULL)
        goto done;
    unsigned char *w = (unsigned char *)PyBytes_AS_STRING(wire);
    long long pktbytes = 0;
    for (Py_ssize_t o = 0; o < total; o += r->pktsize) {
        Py_ssize_t n = total - o < r->pktsize ? total - o : (Py_ssize_t)r->pktsize;
        Py_ssize_t pktlen = seal_at(gk, iv, w, r->send_chan, d + o, n, (long)r->blocksize,
                                    (long)r->enchdrlen);
        if (pktlen < 0)
            goto done;
        w += 4 + pktlen + TAG_LEN;
        pktbytes += pktlen;
    }
    /* the nonce, sequence number, rekey count and window move on as
     * sshtune's _seal_data and SSHChannel.write move them */
    PyObject *ivobj = PyBytes_FromStringAndSize((const char *)iv, IV_LEN);
    if (ivobj == NULL)
        goto done;
    int rc = PyObject_SetAttr(r->cipher, str_iv, ivobj);
    Py_DECREF(ivobj);
    long long seq, sent;
    if (rc < 0 || get_ll(r->pconn, n_send_seq, &seq) < 0 ||
        set_ll(r->pconn, n_send_seq, (seq + npk) & 0xFFFFFFFFLL) < 0 ||
        get_ll(r->pconn, n_rekey_bytes_sent, &sent) < 0 ||
        set_ll(r->pconn, n_rekey_bytes_sent, sent + pktbytes) < 0)
        goto done;
    res = PyObject_CallOneArg(r->write, wire);
    if (res == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ConnectionError))
            goto done;
        PyErr_Clear(); /* as asyncssh's _send: the connection's own close handles it */
    }
    long long window;
    if (get_ll(r->peer, n_send_window, &window) < 0 ||
        set_ll(r->peer, n_send_window, window - total) < 0)
        goto done;
    spliced_packets += (unsigned long long)nparts;
    spliced_writes++;
    item = Py_BuildValue("(OlO)", r->live, r->leg, data);
    if (item == NULL || PyList_Append(done, item) < 0)
        goto done;
    ok = 0;
done:
    Py_XDECREF(item);
    Py_XDECREF(res);
    Py_XDECREF(wire);
    Py_XDECREF(data);
    Py_XDECREF(gk);
    run_clear(r);
    return ok;
}

PyDoc_STRVAR(configure_doc,
"configure(gcm_encryption, plain_channel_types) -> None\n\n"
"What splice_run checks against: asyncssh's GCMEncryption class, and the\n"
"channel classes whose data handling is SSHChannel's own.");

static PyObject *configure(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "configure(gcm_encryption, tuple_of_types)");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_XSETREF(gcm_enc_type, args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(plain_types, args[1]);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(splice_stats_doc,
"splice_stats() -> (packets, writes)\n\n"
"Packets relayed by splice_run since the module was loaded, and the writes\n"
"it made of them (a run of packets for one channel is one write).");

static PyObject *splice_stats(PyObject *mod, PyObject *unused) {
    return Py_BuildValue("(KK)", spliced_packets, spliced_writes);
}

PyDoc_STRVAR(splice_run_doc,
"splice_run(conn, cipher, buf, pos, end, maxlen, blocksize, now, done)\n"
"    -> (pos, stop, packet)\n\n"
"The packets of ``buf[pos:end]`` received on ``conn`` (an asyncssh\n"
"connection whose receive cipher is the GCMCipher ``cipher``), opened in\n"
"order. CHANNEL_DATA for a channel of an attached gateway session in its\n"
"steady state is relayed here: a run of such packets for one channel is\n"
"sealed for the other leg's channel and written to its transport in one\n"
"call, windows, sequence numbers and rekey counts moved on as asyncssh\n"
"moves them, and ``(live, leg, data)`` appended to ``done`` (leg 1: from\n"
"the client, 2: from the target) for the caller to record. It stops at\n"
"the first packet it does not take, and returns it opened with its bounds\n"
"(``pos``, ``stop``) for the caller's own path; at the end of the whole\n"
"packets it returns ``(pos, 0, None)``; at a packet too long or whose tag\n"
"does not verify (nonce left as it was) ``(pos, -1, None)``. ``now`` is\n"
"time.monotonic(), for the rekey-time check.");

static PyObject *splice_run(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9 || !PyList_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError, "splice_run takes 9 arguments");
        return NULL;
    }
    if (gcm_enc_type == NULL || plain_types == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "splice_run before configure");
        return NULL;
    }
    PyObject *conn = args[0], *cipher = args[1], *done = args[8];
    Py_ssize_t pos = PyLong_AsSsize_t(args[3]);
    Py_ssize_t end = PyLong_AsSsize_t(args[4]);
    Py_ssize_t maxlen = PyLong_AsSsize_t(args[5]);
    Py_ssize_t blocksize = PyLong_AsSsize_t(args[6]);
    double now = PyFloat_AsDouble(args[7]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer buf;
    if (PyObject_GetBuffer(args[2], &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL, *channels = NULL, *opened = NULL, *key = NULL;
    GcmKey *gk = NULL;
    Run run = {0};
    unsigned char iv[IV_LEN];
    long long taken = 0;
    Py_ssize_t stop = 0;
    int iv_dirty = 0;
    if (pos < 0 || end > buf.len || blocksize < 5) {
        PyErr_SetString(PyExc_ValueError, "bad bounds");
        goto fail;
    }
    channels = PyObject_GetAttrString(conn, "_channels");
    if (channels == NULL)
        goto fail;
    if (!PyDict_Check(channels)) {
        PyErr_SetString(PyExc_TypeError, "conn._channels is not a dict");
        goto fail;
    }
    gk = gcm_key(cipher, 0);
    if (gk == NULL || read_iv(cipher, iv) < 0)
        goto fail;
    const unsigned char *b = (const unsigned char *)buf.buf;
    while (end - pos >= blocksize) {
        uint32_t pktlen = ((uint32_t)b[pos] << 24) | ((uint32_t)b[pos + 1] << 16) |
                          ((uint32_t)b[pos + 2] << 8) | b[pos + 3];
        if ((Py_ssize_t)pktlen > maxlen) {
            stop = -1; /* asyncssh's own path raises its error */
            break;
        }
        stop = pos + 4 + (Py_ssize_t)pktlen + TAG_LEN;
        if (stop > end) {
            stop = 0; /* the rest of this packet is still on its way */
            break;
        }
        Py_ssize_t clen = (Py_ssize_t)pktlen;
        opened = PyBytes_FromStringAndSize(NULL, clen);
        if (opened == NULL)
            goto fail;
        unsigned char *plain = (unsigned char *)PyBytes_AS_STRING(opened);
        unsigned char tag[TAG_LEN];
        memcpy(tag, b + pos + 4 + clen, TAG_LEN);
        int r = gcm_pass(gk, iv, b + pos, b + pos + 4, plain, (int)clen, tag, 0);
        if (r < 0)
            goto fail;
        if (r == 0) {
            Py_CLEAR(opened);
            stop = -1; /* asyncssh's own path raises its MAC error */
            break;
        }
        for (int i = IV_LEN - 1; i >= 4; i--)
            if (++iv[i] != 0)
                break;
        iv_dirty = 1;
        Py_ssize_t datalen = clen - plain[0] - 10;
        int take = 0;
        PyObject *chan = NULL;
        if (clen >= 10 && plain[1] == MSG_CHANNEL_DATA && datalen > 0 &&
            (((uint32_t)plain[6] << 24) | ((uint32_t)plain[7] << 16) |
             ((uint32_t)plain[8] << 8) | plain[9]) == (uint32_t)datalen) {
            uint32_t recv_chan = ((uint32_t)plain[2] << 24) | ((uint32_t)plain[3] << 16) |
                                 ((uint32_t)plain[4] << 8) | plain[5];
            key = PyLong_FromUnsignedLong(recv_chan);
            if (key == NULL)
                goto fail;
            chan = PyDict_GetItemWithError(channels, key); /* borrowed */
            Py_CLEAR(key);
            if (chan == NULL && PyErr_Occurred())
                goto fail;
        }
        if (chan != NULL) {
            if (run.chan == chan) {
                /* the same channel: the windows are the ones checked at the
                 * run's start, less what the run holds */
                long long recv_window, init_window;
                if (get_ll(chan, n_recv_window, &recv_window) < 0 ||
                    get_ll(chan, n_init_recv_window, &init_window) < 0)
                    goto fail;
                take = datalen <= recv_window && 2 * (recv_window - datalen) >= init_window &&
                       run.total + datalen <= run.send_window;
            } else {
                if (run_flush(&run, done) < 0)
                    goto fail;
                take = run_start(&run, chan, datalen, now);
                if (take < 0)
                    PyErr_Clear(); /* not ours to judge: the Python path will */
            }
        }
        if (take <= 0)
            break; /* this packet goes to the caller, opened */
        if (PyList_Append(run.parts, opened) < 0)
            goto fail;
        Py_CLEAR(opened);
        run.total += datalen;
        long long recv_window;
        if (get_ll(chan, n_recv_window, &recv_window) < 0 ||
            set_ll(chan, n_recv_window, recv_window - datalen) < 0)
            goto fail;
        taken++;
        pos = stop;
        stop = 0;
    }
    if (run_flush(&run, done) < 0)
        goto fail;
    if (taken) {
        int live_transport = attr_true(conn, n_transport);
        long long seq;
        if (live_transport < 0)
            goto fail;
        if (live_transport && (get_ll(conn, n_recv_seq, &seq) < 0 ||
                               set_ll(conn, n_recv_seq, (seq + taken) & 0xFFFFFFFFLL) < 0))
            goto fail;
        if (PyObject_SetAttr(conn, n_auth_final, Py_True) < 0)
            goto fail;
    }
    if (iv_dirty) {
        PyObject *ivobj = PyBytes_FromStringAndSize((const char *)iv, IV_LEN);
        if (ivobj == NULL)
            goto fail;
        int rc = PyObject_SetAttr(cipher, str_iv, ivobj);
        Py_DECREF(ivobj);
        if (rc < 0)
            goto fail;
    }
    result = Py_BuildValue("(nnO)", pos, stop, opened ? opened : Py_None);
    goto out;
fail:
    run_clear(&run);
out:
    Py_XDECREF(opened);
    Py_XDECREF(key);
    Py_XDECREF(channels);
    Py_XDECREF(gk);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef wire_methods[] = {
    {"seal_data", (PyCFunction)(void (*)(void))seal_data, METH_FASTCALL, seal_data_doc},
    {"open_packet", (PyCFunction)(void (*)(void))open_packet, METH_FASTCALL, open_packet_doc},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL, configure_doc},
    {"splice_run", (PyCFunction)(void (*)(void))splice_run, METH_FASTCALL, splice_run_doc},
    {"splice_stats", splice_stats, METH_NOARGS, splice_stats_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway._wire",
    .m_doc = "AES-GCM sealing and opening of SSH binary packets (see _wire.c).",
    .m_size = -1,
    .m_methods = wire_methods,
};

PyMODINIT_FUNC PyInit__wire(void) {
    if (PyType_Ready(&GcmKeyType) < 0)
        return NULL;
    str_key = PyUnicode_InternFromString("_key");
    str_iv = PyUnicode_InternFromString("_iv");
    str_cached = PyUnicode_InternFromString("_sg_wire");
    if (!str_key || !str_iv || !str_cached)
        return NULL;
    if ((n_transport = PyUnicode_InternFromString("_transport")) == NULL)
        return NULL;
    if ((n_recv_seq = PyUnicode_InternFromString("_recv_seq")) == NULL)
        return NULL;
    if ((n_auth_final = PyUnicode_InternFromString("_auth_final")) == NULL)
        return NULL;
    if ((n_recv_state = PyUnicode_InternFromString("_recv_state")) == NULL)
        return NULL;
    if ((n_recv_window = PyUnicode_InternFromString("_recv_window")) == NULL)
        return NULL;
    if ((n_init_recv_window = PyUnicode_InternFromString("_init_recv_window")) == NULL)
        return NULL;
    if ((n_encoding = PyUnicode_InternFromString("_encoding")) == NULL)
        return NULL;
    if ((n_session = PyUnicode_InternFromString("_session")) == NULL)
        return NULL;
    if ((n_send_state = PyUnicode_InternFromString("_send_state")) == NULL)
        return NULL;
    if ((n_recv_paused = PyUnicode_InternFromString("_recv_paused")) == NULL)
        return NULL;
    if ((n_sg_leg = PyUnicode_InternFromString("_sg_leg")) == NULL)
        return NULL;
    if ((n_live = PyUnicode_InternFromString("live")) == NULL)
        return NULL;
    if ((n_client = PyUnicode_InternFromString("client")) == NULL)
        return NULL;
    if ((n_target_chan = PyUnicode_InternFromString("target_chan")) == NULL)
        return NULL;
    if ((n_closed = PyUnicode_InternFromString("closed")) == NULL)
        return NULL;
    if ((n_out = PyUnicode_InternFromString("_out")) == NULL)
        return NULL;
    if ((n_chan = PyUnicode_InternFromString("chan")) == NULL)
        return NULL;
    if ((n_send_buf = PyUnicode_InternFromString("_send_buf")) == NULL)
        return NULL;
    if ((n_send_window = PyUnicode_InternFromString("_send_window")) == NULL)
        return NULL;
    if ((n_conn = PyUnicode_InternFromString("_conn")) == NULL)
        return NULL;
    if ((n_send_chan = PyUnicode_InternFromString("_send_chan")) == NULL)
        return NULL;
    if ((n_send_pktsize = PyUnicode_InternFromString("_send_pktsize")) == NULL)
        return NULL;
    if ((n_send_paused = PyUnicode_InternFromString("_send_paused")) == NULL)
        return NULL;
    if ((n_send_encryption = PyUnicode_InternFromString("_send_encryption")) == NULL)
        return NULL;
    if ((n_kex_complete = PyUnicode_InternFromString("_kex_complete")) == NULL)
        return NULL;
    if ((n_auth_complete = PyUnicode_InternFromString("_auth_complete")) == NULL)
        return NULL;
    if ((n_compressor = PyUnicode_InternFromString("_compressor")) == NULL)
        return NULL;
    if ((n_rekey_bytes_sent = PyUnicode_InternFromString("_rekey_bytes_sent")) == NULL)
        return NULL;
    if ((n_rekey_bytes = PyUnicode_InternFromString("_rekey_bytes")) == NULL)
        return NULL;
    if ((n_rekey_seconds = PyUnicode_InternFromString("_rekey_seconds")) == NULL)
        return NULL;
    if ((n_rekey_time = PyUnicode_InternFromString("_rekey_time")) == NULL)
        return NULL;
    if ((n_send_seq = PyUnicode_InternFromString("_send_seq")) == NULL)
        return NULL;
    if ((n_send_blocksize = PyUnicode_InternFromString("_send_blocksize")) == NULL)
        return NULL;
    if ((n_send_enchdrlen = PyUnicode_InternFromString("_send_enchdrlen")) == NULL)
        return NULL;
    if ((n_cipher = PyUnicode_InternFromString("_cipher")) == NULL)
        return NULL;
    if ((n_write = PyUnicode_InternFromString("write")) == NULL)
        return NULL;
    if ((s_open = PyUnicode_InternFromString("open")) == NULL)
        return NULL;
    if ((s_close_pending = PyUnicode_InternFromString("close_pending")) == NULL)
        return NULL;
    if ((s_closed = PyUnicode_InternFromString("closed")) == NULL)
        return NULL;

    return PyModule_Create(&wire_module);
}
