import remotior_sensus

rs = remotior_sensus.Session(2, 1000)
output = rs.band_dilation(
    ["$DATA/lc/classes2.tif"], [1, 2], 3, "$DATA/out/dilation_positional", True
)
print(output.check)
print(output.paths)
rs.close()
