import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
# a closing of class 4: dilation, then erosion of what the dilation wrote
dilated = rs.band_dilation(
    input_bands=["$DATA/lc/classes.tif"],
    value_list=[4],
    size=1,
    output_path="$DATA/out/closing_chain/dilated",
)
eroded = rs.band_erosion(
    input_bands=dilated.paths,
    value_list=[4],
    size=1,
    output_path="$DATA/out/closing_chain/closed",
)
print(dilated.check)
print(eroded.check)
print(dilated.paths)
print(eroded.paths)
rs.close()
