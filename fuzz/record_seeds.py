#!/usr/bin/env python3
"""Writes the seed corpus of the `record` fuzz target (fuzz/corpus/record/).

That target's input is derived with `arbitrary` 1.5, so a seed is not text:
this encodes a few realistic records (ids, regions, ciphertexts) the way
`arbitrary` decodes them. Strings take their length from the end of the
data, one byte each while the data is at most 256 bytes; enums take a u32
(0, 0x80808080, 0xffffffff pick the first, second, third of three variants);
Vec<u8> puts a 1 before every element and a 0 after the last.
Usage: python3 fuzz/record_seeds.py fuzz/corpus/record
"""
import os, sys, random
random.seed(7)
out = sys.argv[1]
class Enc:
    def __init__(s): s.front=[]; s.back=[]
    def string(s, t):
        b=t.encode(); s.back.append(len(b)); s.front+=list(b)
    def bytes_(s, b):
        for x in b: s.front += [1, x]
        s.front.append(0)
    def variant(s, i):  # of 3
        s.front += [[0,0,0,0],[0x80]*4,[0xff]*4][i]
    def u8(s, v): s.front.append(v)
    def i64(s, v): s.front += list(v.to_bytes(8,'little',signed=True))
    def data(s): return bytes(s.front + s.back[::-1])
def rec(id, version, keys):
    e=Enc(); e.string(id)
    if version == 'missing': e.variant(0)
    elif version == 'current': e.variant(1)
    else: e.variant(2); e.i64(version)
    for region, kind, val in keys:
        e.u8(1); e.string(region)
        if kind=='enc': e.variant(0); e.bytes_(val)
        elif kind=='pad': e.variant(1); e.u8(val[0]); e.bytes_(val[1]); e.u8(val[2])
        else: e.variant(2); e.string(val)
    d=e.data(); assert len(d) <= 256, len(d); return d
rb=lambda n: bytes(random.randrange(256) for _ in range(n))
seeds = {
 'two_regions': rec('tenant/acme/doc-7','current',[('eu-west-1','enc',rb(40)),('us-east-1','enc',rb(40))]),
 'legacy_unversioned': rec('user-42','missing',[('eu-west-1','pad',(0,rb(32),3))]),
 'not_base64': rec('user-42','current',[('eu-west-1','text','not base64!'),('us-east-1','enc',rb(24))]),
 'empty_ciphertext': rec('user-42','current',[('eu-west-1','enc',b'')]),
 'unknown_version': rec('user-42',3,[('eu-west-1','enc',rb(24))]),
 'no_ciphertexts': rec('user-42','current',[]),
 'control_in_id': rec('user\n42','current',[('eu-west-1','enc',rb(24))]),
}
os.makedirs(out, exist_ok=True)
for n,d in seeds.items(): open(os.path.join(out,n),'wb').write(d)
