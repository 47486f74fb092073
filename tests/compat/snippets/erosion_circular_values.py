import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_erosion(
    input_bands=["$DATA/lc/classes.tif", "$DATA/lc/classes2.tif"],
    value_list=[1, 2],
    size=2,
    output_path="$DATA/out/erosion_circular_values",
    circular_structure=True,
    prefix="erosion_",
)
print(output.check)
print(output.paths)
rs.close()
