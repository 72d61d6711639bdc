#!/usr/bin/env python3
"""Floods a port with raw frames, for the floods tests and `perf --scenario floods`.

Usage: flooder.py KIND IFNAME SECONDS ARGS...   (as root, inside the container's namespace)

Sends frames out of IFNAME through an AF_PACKET socket, with IFNAME's own MAC as source (so
port security judges only what KIND varies), as fast as it can for SECONDS, then prints how
many it sent. 4096 variants are built first and sent in a loop.
  mac                       broadcast frames (ethertype 0x88b5) from random locally
                            administered source MACs
  arp MYIP GW               ARP requests for GW from IFNAME's MAC and MYIP
  nd                        IPv6 neighbour solicitations for random link-local targets,
                            to their solicited-node groups
  frag MYIP DST DSTMAC      UDP fragments with random identifications and overlapping
                            offsets, all with more-fragments set: never a whole datagram
  syn MYIP DST PORT DSTMAC  TCP SYNs from random source ports (valid checksums)
  cpu                       no frames: the same loop without the send, so the container
                            only takes a core (the control for the others); prints 0
"""
import os, random, socket, struct, sys, time
kind, ifname, seconds, args = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
mymac = bytes.fromhex(open('/sys/class/net/%s/address' % ifname).read().strip().replace(':', ''))
def mac(text):
    return bytes.fromhex(text.replace(':', ''))
def csum(b):
    if len(b) % 2:
        b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return (~t) & 0xffff
def ipv4(src, dst, proto, payload, ident=0, frag=0x4000):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack('!H', csum(h)) + h[12:] + payload
def eth(dst, typ, payload):
    return dst + mymac + struct.pack('!H', typ) + payload
def gen_mac():
    src = bytearray(os.urandom(6))
    src[0] = (src[0] & 0xfc) | 0x02
    # An experimental ethertype: parsing passes it, so port security judges the source.
    return b'\xff' * 6 + bytes(src) + b'\x88\xb5' + os.urandom(46)
def gen_arp():
    myip, gw = args
    arp = struct.pack('!HHBBH6s4s6s4s', 1, 0x0800, 6, 4, 1, mymac, socket.inet_aton(myip),
                      b'\0' * 6, socket.inet_aton(gw))
    return eth(b'\xff' * 6, 0x0806, arp + b'\0' * 18)
def gen_nd():
    target = bytes.fromhex('fe80000000000000') + os.urandom(8)
    group = bytes.fromhex('ff0200000000000000000001ff') + target[13:]
    src = bytes.fromhex('fe80000000000000') + bytes([mymac[0] ^ 2]) + mymac[1:3] + b'\xff\xfe' + mymac[3:]
    icmp = struct.pack('!BBHI', 135, 0, 0, 0) + target + struct.pack('!BB', 1, 1) + mymac
    pseudo = src + group + struct.pack('!I', len(icmp)) + b'\0\0\0\x3a'
    icmp = icmp[:2] + struct.pack('!H', csum(pseudo + icmp)) + icmp[4:]
    ip6 = struct.pack('!IHBB', 0x60000000, len(icmp), 58, 255) + src + group
    return b'\x33\x33' + group[12:] + mymac + b'\x86\xdd' + ip6 + icmp
def gen_frag():
    myip, dst, dstmac = args
    offset = random.randrange(0, 8000)
    return eth(mac(dstmac), 0x0800, ipv4(myip, dst, 17, os.urandom(64), random.getrandbits(16), 0x2000 | offset))
def gen_syn():
    myip, dst, port, dstmac = args
    sport = random.randrange(1024, 65535)
    tcp = struct.pack('!HHIIBBHHH', sport, int(port), random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(myip) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack('!H', csum(pseudo + tcp)) + tcp[18:]
    return eth(mac(dstmac), 0x0800, ipv4(myip, dst, 6, tcp))
if kind == 'cpu':
    end = time.time() + seconds
    spins = 0
    while time.time() < end:
        for f in range(4096):
            spins += 1
    print(0)
    sys.exit(0)
gen = {'mac': gen_mac, 'arp': gen_arp, 'nd': gen_nd, 'frag': gen_frag, 'syn': gen_syn}[kind]
frames = [gen() for _ in range(4096)]
end = time.time() + seconds
sent = 0
while time.time() < end:
    for f in frames:
        try:
            s.send(f)
            sent += 1
        except OSError:
            pass
print(sent)
