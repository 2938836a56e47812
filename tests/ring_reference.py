# Independent check of the ring spec: SipHash-2-4, zero key.
import struct, bisect
M=(1<<64)-1
def rotl(x,b): return ((x<<b)|(x>>(64-b)))&M
def sip(data,k0=0,k1=0):
    v0=k0^0x736f6d6570736575; v1=k1^0x646f72616e646f6d; v2=k0^0x6c7967656e657261; v3=k1^0x7465646279746573
    def rnd():
        nonlocal v0,v1,v2,v3
        v0=(v0+v1)&M; v1=rotl(v1,13); v1^=v0; v0=rotl(v0,32)
        v2=(v2+v3)&M; v3=rotl(v3,16); v3^=v2
        v0=(v0+v3)&M; v3=rotl(v3,21); v3^=v0
        v2=(v2+v1)&M; v1=rotl(v1,17); v1^=v2; v2=rotl(v2,32)
    n=len(data); end=n-n%8
    for i in range(0,end,8):
        m=struct.unpack('<Q',data[i:i+8])[0]; v3^=m; rnd(); rnd(); v0^=m
    b=(n&0xff)<<56
    for i,c in enumerate(data[end:]): b|=c<<(8*i)
    v3^=b; rnd(); rnd(); v0^=b
    v2^=0xff
    for _ in range(4): rnd()
    return v0^v1^v2^v3
# The default points_per_weight (config/defaults.rs), weight 1 each.
POINTS=16384
pts=[]
for name in ["node-a","node-b","node-c"]:
    for i in range(POINTS):
        pts.append((sip(name.encode()+b'\xff'+struct.pack('<I',i)),name,i))
pts.sort()
keys=[p[0] for p in pts]
import sys
if len(sys.argv)>2 and sys.argv[2]=="--write":
    # Regenerate the table for the same IPs (a conscious change of every mapping).
    out=[]
    for line in open(sys.argv[1]):
        ip=line.split()[0]
        j=bisect.bisect_left(keys,sip(bytes(int(x) for x in ip.split('.'))))
        out.append("%s %s\n"%(ip,pts[0 if j==len(keys) else j][1]))
    open(sys.argv[1],"w").write("".join(out))
for line in open(sys.argv[1]):
    ip,node=line.split()
    k=sip(bytes(int(x) for x in ip.split('.')))
    j=bisect.bisect_left(keys,k)
    if j==len(keys): j=0
    assert pts[j][1]==node,(ip,node,pts[j][1])
print("python reference agrees on all", sum(1 for _ in open(sys.argv[1])), "IPs")
