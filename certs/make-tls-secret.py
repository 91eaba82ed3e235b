#!/usr/bin/env python3
"""Makes the certificates a gateway's TLS secret tests need, at run time (no key text in the
repository): usage `make-tls-secret.py DIR [HOST]` writes into DIR

  ca.pem, ca.key            a root CA for the server side
  int.pem                   an intermediate CA signed by the root
  server.pem, server.key    a leaf for HOST (default bookinfo.example) signed by the intermediate;
                            server.pem holds the leaf then the intermediate (a chain in order)
  server-leaf.pem           the leaf alone
  chain-reversed.pem        the intermediate then the leaf (out of order)
  server2.pem, server2.key  a second leaf for HOST (another serial), for rotation
  other.key                 a key that matches no certificate here
  expired.pem, expired.key  a leaf that expired yesterday
  future.pem, future.key    a leaf valid only from tomorrow
  soon.pem, soon.key        a leaf that expires in 3 days
  encrypted.key             server.key encrypted with a passphrase
  client-ca.pem             a CA for client certificates (MUTUAL)
  client.pem, client.key    a client certificate signed by client-ca
  rogue-client.pem, .key    a client certificate from a CA the gateway does not trust
The serials of server.pem and server2.pem are printed, one per line (hex)."""
import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

out = sys.argv[1]
host = sys.argv[2] if len(sys.argv) > 2 else "bookinfo.example"
os.makedirs(out, exist_ok=True)
now = datetime.datetime.now(datetime.timezone.utc)
day = datetime.timedelta(days=1)


def key():
    return ec.generate_private_key(ec.SECP256R1())


def cert(subject, k, issuer=None, ik=None, ca=False, sans=None, start=None, end=None, client=False):
    issuer = issuer or subject
    ik = ik or k
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(k.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(start or now - day)
         .not_valid_after(end or now + 90 * day)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                                          encipher_only=False, decipher_only=False), critical=True)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    if client:
        b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return b.sign(ik, hashes.SHA256())


def pem(c):
    return c.public_bytes(serialization.Encoding.PEM)


def keypem(k, password=None):
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def write(name, data):
    path = os.path.join(out, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


cak = key()
ca = cert("Test Root CA", cak, ca=True)
intk = key()
inter = cert("Test Intermediate CA", intk, "Test Root CA", cak, ca=True)
write("ca.pem", pem(ca))
write("ca.key", keypem(cak))
write("int.pem", pem(inter))


def leaf(name, **kw):
    k = key()
    c = cert(host, k, "Test Intermediate CA", intk, sans=[host], **kw)
    write(name + ".pem", pem(c) + pem(inter))
    write(name + ".key", keypem(k))
    return c, k


s1, s1k = leaf("server")
write("server-leaf.pem", pem(s1))
write("chain-reversed.pem", pem(inter) + pem(s1))
s2, _ = leaf("server2")
write("other.key", keypem(key()))
leaf("expired", start=now - 30 * day, end=now - day)
leaf("future", start=now + day, end=now + 30 * day)
leaf("soon", end=now + 3 * day)
write("encrypted.key", keypem(s1k, b"secret-passphrase"))

cck = key()
cca = cert("Test Client CA", cck, ca=True)
write("client-ca.pem", pem(cca))
ck = key()
write("client.pem", pem(cert("test-client", ck, "Test Client CA", cck, client=True)))
write("client.key", keypem(ck))
rk = key()
rca = key()
write("rogue-client.pem", pem(cert("rogue-client", rk, "Rogue CA", rca, client=True)))
write("rogue-client.key", keypem(rk))
print("%x" % s1.serial_number)
print("%x" % s2.serial_number)
