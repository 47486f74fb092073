import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_dilation(
    input_bands=["$DATA/lc/classes.tif"],
    value_list=[7],
    size=1,
    output_path="$DATA/out/dilation_square",
    prefix="dilation_",
)
print(output.check)
print(output.paths)
rs.close()
