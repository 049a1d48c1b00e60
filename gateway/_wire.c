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
 * This module owns only bytes-in, bytes-out packet crypto for the ciphers
 * "aes128-gcm@openssh.com" and "aes256-gcm@openssh.com" (RFC 5647 as
 * OpenSSH uses it: the 4-byte length is associated data, the 16-byte tag
 * follows the ciphertext, the nonce's 64-bit counter goes up by one per
 * packet). The state it reads and writes is asyncssh's own: the cipher
 * object's ``_key`` and ``_iv``, so asyncssh's path and this one can take
 * turns on one connection. Everything else (windows, channel states,
 * sequence numbers, rekeys) stays in Python. gateway.sshtune falls back to
 * its pure-Python path when this module is not built (SHELLGATE_NATIVE=0
 * also turns it off).
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

static PyMethodDef wire_methods[] = {
    {"seal_data", (PyCFunction)(void (*)(void))seal_data, METH_FASTCALL, seal_data_doc},
    {"open_packet", (PyCFunction)(void (*)(void))open_packet, METH_FASTCALL, open_packet_doc},
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
    return PyModule_Create(&wire_module);
}
